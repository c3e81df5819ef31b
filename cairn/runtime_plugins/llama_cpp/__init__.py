"""The built-in runtime: llama.cpp through llama-cpp-python."""
