"""SGLang 0.5.17 integration: the `LlamaForCausalLMPrism` draft model, the `--speculative-algorithm PRISM`
plugin and the patches that tell the draft model its draft step (DESIGN §3).

This is the only place in the project that imports sglang, and only in `model` and `plugin`; importing this
package (or `patching`) does not, so the CPU install works without sglang.
"""

SGLANG_VERSION = "0.5.17"
ALGORITHM = "PRISM"
