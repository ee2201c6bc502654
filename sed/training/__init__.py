"""Training SED with the paper's recipe: plain PyTorch (DDP under torchrun), no detectron2."""
