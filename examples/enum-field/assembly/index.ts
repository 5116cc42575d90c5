// enum-field: the value must be an object whose configured field holds one
// of the configured strings.
// Config: { "field": "status", "allowed": ["draft", "published"] }

import { Write, Outcome, register } from "exdaas-guest/assembly";
export { exdaas_abi_version, exdaas_alloc, exdaas_on_write } from "exdaas-guest/assembly";

function check(w: Write): Outcome {
  const config = w.configValue();
  if (config == null || !config.isObject()) return Outcome.reject("bad_config", "plugin config is not a JSON object");
  const fieldValue = config.get("field");
  const allowed = config.get("allowed");
  if (fieldValue == null || !fieldValue.isString() || allowed == null || !allowed.isArray()) {
    return Outcome.reject("bad_config", "config needs field (a string) and allowed (a list of strings)");
  }
  const field = fieldValue.str;
  const value = w.valueJson();
  if (value == null || !value.isObject()) return Outcome.rejectAt("not_object", "value must be a JSON object", "$");
  const got = value.get(field);
  if (got == null) return Outcome.rejectAt("missing_field", "field " + field + " is required", "$." + field);
  if (got.isString()) {
    for (let i = 0; i < allowed.items.length; i++) {
      const option = allowed.items[i];
      if (option.isString() && option.str == got.str) return Outcome.accept();
    }
  }
  const names: string[] = [];
  for (let i = 0; i < allowed.items.length; i++) names.push(allowed.items[i].toJson());
  return Outcome.rejectAt(
    "not_allowed",
    "field " + field + " must be one of " + names.join(", ") + ", got " + got.toJson(),
    "$." + field,
  );
}

register(check);
