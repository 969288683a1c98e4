"""Writing adapters for runtimes that do not read PEFT folders: llama.cpp's LoRA GGUF."""
