"""Key-Point-Driven Distillation: the versioned teacher prompts and the parser of their answers.

`prompts.render_prompt` builds a provider-neutral message list for one (mode, stage mode, stage);
`parsing.parse_response` / `parsing.parse_stage` turn a teacher's text back into typed records
(`records.KeyPoints`) or a `records.ParseFailure` saying what went wrong. Nothing here talks to
a network or runs generated code.
"""
