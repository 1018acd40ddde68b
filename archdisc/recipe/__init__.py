"""The discover recipe: config, the training loop, the stages (search, extract, select,
fine-tune), the run folder, and bring-your-own supernets and data."""
