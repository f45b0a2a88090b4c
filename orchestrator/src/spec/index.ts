/**
 * spec: a user's YAML or JSON spec in, a validated, deeply frozen JobSpec
 * out; plus the JSON Schema (json-schema.ts) and documented field list
 * derived from the same field descriptions (schema.ts).
 */
export { loadSpecDocument, loadSpecFile, parseSpec, type LoadOptions, type SpecLocator } from "./load.js";
export { type SpecContext } from "./resolve.js";
export { loadPresets, type Presets, type ImagePreset, type VitPreset, type MciPreset, type TextPreset } from "./presets.js";
export { SPEC_FIELDS } from "./schema.js";
export { jsonSchema } from "./json-schema.js";
export { canonicalJson } from "./canonical.js";
export { issueAtField, SpecValidationError, type SpecIssue } from "./issues.js";
export { refreshDoc, renderDocBlocks } from "./docs.js";
export { isOpenClipRef, MAX_SPEC_BYTES, OPEN_CLIP_CONFIG_NAME, readTextFile } from "./files.js";
export { checkSpecPolicy, DEFAULT_ALLOWED_ENV, DEFAULT_SPEC_POLICY, DENIED_ENV, envAllowed, type SpecPolicy } from "./policy.js";
export { recaptionOutputName } from "./stage.js";
