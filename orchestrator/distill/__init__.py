"""`ladder distill`: a teacher LLM writes the rationale and the label of each input (DSS's
first half), screened as the paper screened its examples, into the JSONL Ladder trains on.

Pure parts (no I/O, tested without a server): `prompt` renders the chain-of-thought template,
`parse` splits an answer into rationale and label, `screen` decides whether an example is kept
and why not. I/O parts: `inputs` reads the file of questions, `cache` keeps every paid answer
on disk (SQLite), `client` talks to an OpenAI-compatible chat-completions endpoint, `run`
drives them. No torch anywhere: this runs where the controller runs.
"""
