// exdaas guest SDK for AssemblyScript: the same Write / Outcome model and
// JSON helpers as the Rust crate `exdaas-guest`. A plugin's entry file:
//
//   import { Write, Outcome, register } from "exdaas-guest/assembly";
//   export { exdaas_abi_version, exdaas_alloc, exdaas_on_write } from "exdaas-guest/assembly";
//   function check(w: Write): Outcome { ... }
//   register(check);
//
// Build with `asc ... --runtime incremental --use abort=`: the host offers no
// `env.abort`, only `exdaas.log`.

import { ABI_VERSION, ABSENT, OP_DELETE, LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG } from "./abi";
import { Value, parse, quote } from "./json";

export { ABI_VERSION, OP_PUT, OP_DELETE, ABSENT, LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG } from "./abi";
export { Value, Kind, parse, quote, MAX_DEPTH } from "./json";

@external("exdaas", "log")
declare function hostLog(level: i32, ptr: usize, len: i32): void;

/** Writes a line to the server log, tagged with the plugin and the key. */
export function log(level: i32, message: string): void {
  const bytes = String.UTF8.encode(message);
  hostLog(level, changetype<usize>(bytes), bytes.byteLength);
}
export function logError(m: string): void { log(LOG_ERROR, m); }
export function logWarn(m: string): void { log(LOG_WARN, m); }
export function logInfo(m: string): void { log(LOG_INFO, m); }
export function logDebug(m: string): void { log(LOG_DEBUG, m); }

/** One write the host asks the plugin to judge. */
export class Write {
  constructor(
    /** True for a delete (the plugin then has no new value). */
    public isDelete: bool,
    public key: string,
    /** The new value as JSON text ("" for a delete). */
    public value: string,
    /** The stored value as JSON text, or null for a new key. */
    public old: string | null,
    /** The plugin's config as JSON text. */
    public config: string,
    /** The host's clock, ms since the Unix epoch. */
    public nowMs: i64,
  ) {}

  static put(key: string, value: string): Write { return new Write(false, key, value, null, "{}", 0); }
  static del(key: string): Write { return new Write(true, key, "", null, "{}", 0); }
  withOld(old: string): Write { this.old = old; return this; }
  withConfig(config: string): Write { this.config = config; return this; }
  at(nowMs: i64): Write { this.nowMs = nowMs; return this; }

  /** The new value parsed (null for a delete or invalid JSON). */
  valueJson(): Value | null { return this.isDelete ? null : parse(this.value); }
  /** The stored value parsed (null when there is none). */
  oldJson(): Value | null { const o = this.old; return o == null ? null : parse(o); }
  /** The config parsed (null when it is not JSON). */
  configJson(): Value | null { return parse(this.config); }
  /**
   * The config parsed on the first call and kept while the host passes the
   * same text (it passes it with every write): one parse per instance, not
   * per write. The value is shared between calls: read it, do not change it.
   */
  configValue(): Value | null {
    if (parsedConfigText == null || parsedConfigText != this.config) {
      parsedConfig = parse(this.config);
      parsedConfigText = this.config;
    }
    return parsedConfig;
  }
}

/** The config text `configValue` last parsed, and what it parsed to. */
let parsedConfigText: string | null = null;
let parsedConfig: Value | null = null;

export enum Action { Accept, Reject, Replace }

/** A plugin's answer. */
export class Outcome {
  action: Action = Action.Accept;
  code: string = "";
  message: string = "";
  path: string | null = null;
  /** The replacement's JSON text. */
  value: string = "";

  static accept(): Outcome { return new Outcome(); }
  static reject(code: string, message: string): Outcome {
    const o = new Outcome(); o.action = Action.Reject; o.code = code; o.message = message; return o;
  }
  static rejectAt(code: string, message: string, path: string): Outcome {
    const o = Outcome.reject(code, message); o.path = path; return o;
  }
  static replace(value: Value): Outcome {
    const o = new Outcome(); o.action = Action.Replace; o.value = value.toJson(); return o;
  }

  /** The verdict JSON the host reads (guest-sdk/ABI.md). */
  verdictJson(): string {
    if (this.action == Action.Accept) return "{\"action\":\"accept\"}";
    if (this.action == Action.Replace) return "{\"action\":\"replace\",\"value\":" + this.value + "}";
    let text = "{\"action\":\"reject\",\"code\":" + quote(this.code) + ",\"message\":" + quote(this.message);
    const path = this.path;
    if (path != null) text += ",\"path\":" + quote(path);
    return text + "}";
  }
}

let handler: (w: Write) => Outcome = (w: Write): Outcome => Outcome.reject("no_handler", "the plugin registered no handler");
/** The input buffer of the current call, freed at the next. */
let input: usize = 0;
/** The last verdict; must outlive the call so the host can read it. */
let output: ArrayBuffer = new ArrayBuffer(0);

/** Makes `h` the plugin's handler (call once, at the top level). */
export function register(h: (w: Write) => Outcome): void { handler = h; }

export function exdaas_abi_version(): i32 { return ABI_VERSION; }

export function exdaas_alloc(len: i32): usize {
  if (input != 0) { heap.free(input); input = 0; }
  input = heap.alloc(len > 0 ? <usize>len : 1);
  return input;
}

function part(at: usize, len: i32): string | null {
  return len == ABSENT ? null : String.UTF8.decodeUnsafe(at, <usize>len);
}

export function exdaas_on_write(op: i32, buf: usize, keyLen: i32, valueLen: i32, oldLen: i32, configLen: i32, nowMs: i64): i64 {
  let at = buf;
  const key = part(at, keyLen);
  at += <usize>max(keyLen, 0);
  const value = part(at, valueLen);
  at += <usize>max(valueLen, 0);
  const old = part(at, oldLen);
  at += <usize>max(oldLen, 0);
  const config = part(at, configLen);
  const write = new Write(op == OP_DELETE, key != null ? key : "", value != null ? value : "", old, config != null ? config : "{}", nowMs);
  const outcome = handler(write);
  if (outcome.action == Action.Accept) return 0;
  output = String.UTF8.encode(outcome.verdictJson());
  return (<i64>changetype<usize>(output) << 32) | <i64>output.byteLength;
}
