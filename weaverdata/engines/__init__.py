"""Model engines: the captioning engine (vLLM through Ray Data LLM, OpenAI-compatible servers,
transformers) with prompts, output checks and a result cache."""
