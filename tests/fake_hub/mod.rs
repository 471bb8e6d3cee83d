//! The fake Hugging Face hub used by tests, benchmarks and demos. Placeholder.
