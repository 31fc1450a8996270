# Included right after llama.cpp's project() when `make` compiles llama-cpp-python
# (-DCMAKE_PROJECT_llama.cpp_INCLUDE=<this file>). llama-cpp-python forces llama.cpp's `common` library on
# (chat templates, argument parsing, downloads: about half of the compile); personaloom.llm.embedded_server
# loads only libllama and ggml, so a normal variable shadows that cache setting and `common` is not built.
set(LLAMA_BUILD_COMMON OFF)
