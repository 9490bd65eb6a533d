# TEST-ONLY layer on a built prism-sglang image: the test kit of tests/sglang_cpu (plain-PyTorch sgl_kernel ops,
# start-up shims) and the import-only torchvision stub, so that the image's own entry point can start the real
# SGLang server on SGLang's CPU engine. The product image itself never contains any of this.
ARG PRODUCT_IMAGE
FROM ${PRODUCT_IMAGE}
COPY sglang_cpu/site/ /opt/prism-test/tests/sglang_cpu/site/
COPY stubs/ /opt/prism-test/tests/stubs/
ENV SGLANG_USE_CPU_ENGINE=1 \
    PYTHONPATH=/opt/prism-test/tests/sglang_cpu/site \
    TORCH_COMPILE_DISABLE=1 \
    OMP_NUM_THREADS=1
