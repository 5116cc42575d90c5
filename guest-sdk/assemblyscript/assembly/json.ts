// A small JSON value type with a parser and a writer: what a validator or a
// transform needs to read the value, the stored value and its config, and
// to build a replacement. Nesting is bounded (MAX_DEPTH), so a parse never
// recurses deeper than that whatever the input.

/** Deepest nesting the parser accepts (the server's own default is 64). */
export const MAX_DEPTH: i32 = 128;

export enum Kind { Null, Bool, Number, String, Array, Object }

/** One JSON value. Objects keep their members in order. */
export class Value {
  kind: Kind = Kind.Null;
  bool: bool = false;
  num: f64 = 0;
  str: string = "";
  items: Value[] = [];
  keys: string[] = [];

  static null(): Value { return new Value(); }
  static fromBool(b: bool): Value { const v = new Value(); v.kind = Kind.Bool; v.bool = b; return v; }
  static fromNumber(n: f64): Value { const v = new Value(); v.kind = Kind.Number; v.num = n; return v; }
  static fromString(s: string): Value { const v = new Value(); v.kind = Kind.String; v.str = s; return v; }
  static array(): Value { const v = new Value(); v.kind = Kind.Array; return v; }
  static object(): Value { const v = new Value(); v.kind = Kind.Object; return v; }

  isNull(): bool { return this.kind == Kind.Null; }
  isObject(): bool { return this.kind == Kind.Object; }
  isArray(): bool { return this.kind == Kind.Array; }
  isString(): bool { return this.kind == Kind.String; }
  isNumber(): bool { return this.kind == Kind.Number; }
  isBool(): bool { return this.kind == Kind.Bool; }

  /** The member `key` of an object, or null (also for other values). */
  get(key: string): Value | null {
    if (this.kind != Kind.Object) return null;
    for (let i = 0; i < this.keys.length; i++) {
      if (this.keys[i] == key) return this.items[i];
    }
    return null;
  }

  /** Sets member `key` of an object (in place, or appended); false if not an object. */
  set(key: string, value: Value): bool {
    if (this.kind != Kind.Object) return false;
    for (let i = 0; i < this.keys.length; i++) {
      if (this.keys[i] == key) { this.items[i] = value; return true; }
    }
    this.keys.push(key);
    this.items.push(value);
    return true;
  }

  /** Appends to an array; false if not an array. */
  push(value: Value): bool {
    if (this.kind != Kind.Array) return false;
    this.items.push(value);
    return true;
  }

  /** "null", "boolean", "number", "string", "array" or "object". */
  typeName(): string {
    switch (this.kind) {
      case Kind.Bool: return "boolean";
      case Kind.Number: return "number";
      case Kind.String: return "string";
      case Kind.Array: return "array";
      case Kind.Object: return "object";
      default: return "null";
    }
  }

  /** Compact JSON text. */
  toJson(): string {
    const out: string[] = [];
    this.write(out);
    return out.join("");
  }

  private write(out: string[]): void {
    switch (this.kind) {
      case Kind.Null: out.push("null"); break;
      case Kind.Bool: out.push(this.bool ? "true" : "false"); break;
      case Kind.Number: out.push(numberText(this.num)); break;
      case Kind.String: out.push(quote(this.str)); break;
      case Kind.Array: {
        out.push("[");
        for (let i = 0; i < this.items.length; i++) {
          if (i > 0) out.push(",");
          this.items[i].write(out);
        }
        out.push("]");
        break;
      }
      default: {
        out.push("{");
        for (let i = 0; i < this.items.length; i++) {
          if (i > 0) out.push(",");
          out.push(quote(this.keys[i]));
          out.push(":");
          this.items[i].write(out);
        }
        out.push("}");
      }
    }
  }
}

/** Integers print without a fraction; others as AssemblyScript prints f64. */
function numberText(n: f64): string {
  if (!isFinite(n)) return "null";
  if (n == Math.floor(n) && Math.abs(n) < 9007199254740992.0) return (<i64>n).toString();
  return n.toString();
}

/** `s` as a JSON string literal. */
export function quote(s: string): string {
  const out: string[] = ["\""];
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c == 0x22) out.push("\\\"");
    else if (c == 0x5c) out.push("\\\\");
    else if (c == 0x0a) out.push("\\n");
    else if (c == 0x0d) out.push("\\r");
    else if (c == 0x09) out.push("\\t");
    else if (c < 0x20) out.push("\\u00" + (c < 0x10 ? "0" : "") + c.toString(16));
    else out.push(String.fromCharCode(c));
  }
  out.push("\"");
  return out.join("");
}

/** Parses one JSON document; null when it is not valid JSON (or too deep). */
export function parse(text: string): Value | null {
  const p = new Parser(text);
  const v = p.value(0);
  if (v == null) return null;
  p.ws();
  return p.i == text.length ? v : null;
}

class Parser {
  i: i32 = 0;
  constructor(public s: string) {}

  ws(): void {
    while (this.i < this.s.length) {
      const c = this.s.charCodeAt(this.i);
      if (c == 0x20 || c == 0x09 || c == 0x0a || c == 0x0d) this.i++;
      else break;
    }
  }

  lit(word: string): bool {
    if (this.s.substr(this.i, word.length) == word) { this.i += word.length; return true; }
    return false;
  }

  value(depth: i32): Value | null {
    if (depth > MAX_DEPTH) return null;
    this.ws();
    if (this.i >= this.s.length) return null;
    const c = this.s.charCodeAt(this.i);
    if (c == 0x7b) return this.object(depth + 1);
    if (c == 0x5b) return this.array(depth + 1);
    if (c == 0x22) {
      const s = this.string();
      return s == null ? null : Value.fromString(s);
    }
    if (this.lit("true")) return Value.fromBool(true);
    if (this.lit("false")) return Value.fromBool(false);
    if (this.lit("null")) return Value.null();
    return this.number();
  }

  number(): Value | null {
    const start = this.i;
    if (this.i < this.s.length && this.s.charCodeAt(this.i) == 0x2d) this.i++;
    let digits = 0;
    while (this.i < this.s.length) {
      const c = this.s.charCodeAt(this.i);
      const numeric = (c >= 0x30 && c <= 0x39) || c == 0x2e || c == 0x65 || c == 0x45 || c == 0x2b || c == 0x2d;
      if (!numeric) break;
      if (c >= 0x30 && c <= 0x39) digits++;
      this.i++;
    }
    if (digits == 0) return null;
    const n = parseFloat(this.s.substring(start, this.i));
    return isNaN(n) ? null : Value.fromNumber(n);
  }

  string(): string | null {
    this.i++; // opening quote
    const out: string[] = [];
    let run = this.i;
    while (this.i < this.s.length) {
      const c = this.s.charCodeAt(this.i);
      if (c == 0x22) {
        out.push(this.s.substring(run, this.i));
        this.i++;
        return out.join("");
      }
      if (c < 0x20) return null;
      if (c == 0x5c) {
        out.push(this.s.substring(run, this.i));
        if (this.i + 1 >= this.s.length) return null;
        const e = this.s.charCodeAt(this.i + 1);
        this.i += 2;
        if (e == 0x22) out.push("\"");
        else if (e == 0x5c) out.push("\\");
        else if (e == 0x2f) out.push("/");
        else if (e == 0x62) out.push("\b");
        else if (e == 0x66) out.push("\f");
        else if (e == 0x6e) out.push("\n");
        else if (e == 0x72) out.push("\r");
        else if (e == 0x74) out.push("\t");
        else if (e == 0x75) {
          if (this.i + 4 > this.s.length) return null;
          const code = I32.parseInt(this.s.substr(this.i, 4), 16);
          if (isNaN(<f64>code) || code < 0) return null;
          out.push(String.fromCharCode(code));
          this.i += 4;
        } else return null;
        run = this.i;
        continue;
      }
      this.i++;
    }
    return null;
  }

  array(depth: i32): Value | null {
    this.i++;
    const v = Value.array();
    this.ws();
    if (this.i < this.s.length && this.s.charCodeAt(this.i) == 0x5d) { this.i++; return v; }
    while (true) {
      const item = this.value(depth);
      if (item == null) return null;
      v.items.push(item);
      this.ws();
      if (this.i >= this.s.length) return null;
      const c = this.s.charCodeAt(this.i++);
      if (c == 0x5d) return v;
      if (c != 0x2c) return null;
    }
  }

  object(depth: i32): Value | null {
    this.i++;
    const v = Value.object();
    this.ws();
    if (this.i < this.s.length && this.s.charCodeAt(this.i) == 0x7d) { this.i++; return v; }
    while (true) {
      this.ws();
      if (this.i >= this.s.length || this.s.charCodeAt(this.i) != 0x22) return null;
      const key = this.string();
      if (key == null) return null;
      this.ws();
      if (this.i >= this.s.length || this.s.charCodeAt(this.i) != 0x3a) return null;
      this.i++;
      const item = this.value(depth);
      if (item == null) return null;
      v.keys.push(key);
      v.items.push(item);
      this.ws();
      if (this.i >= this.s.length) return null;
      const c = this.s.charCodeAt(this.i++);
      if (c == 0x7d) return v;
      if (c != 0x2c) return null;
    }
  }
}
