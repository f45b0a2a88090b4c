"""Tasks: one entry point each (pretrain, finetune-seg/depth, eval), run by worker.py."""
