"""The training room: the SS-MTP and fine-tuning runs (`typemoe train`, `typemoe finetune`, torchrun), their
windows and augmentations, losses, loop, checkpoints, the GPU recipe and the training benchmark."""
