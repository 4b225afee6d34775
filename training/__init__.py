"""Training, in three rooms: data (sources, labels, token shards), learn (the runs: SS-MTP, fine-tuning,
the GPU recipe) and evaluation (`typemoe eval` and the fusion fits). Installed as typemoe.training."""
