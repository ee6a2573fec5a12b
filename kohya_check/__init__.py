"""`make kohya-check`: the real sd-scripts engine, trained offline on the CPU through the product's entrypoint."""
