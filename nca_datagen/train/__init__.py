"""A lightweight trainer for NCA pre-pre-training and transfer to language, separate from the generator.

It reads NCA data only through the public loader (`nca_datagen.loader`) and never imports the generator
(rules, rollout, kernels, generate): any other trainer could stand in its place. Modules:

    model     a small Llama-style decoder and its named sizes
    trainer   the training loop: schedule, accumulation, checkpoints, resume, logging
    nca       NCA batches from the loader
    frames    NCA validation loss by frame position, its unigram baselines and picture
    text      byte-level text corpora, split by document
    transfer  keep chosen block parts of an NCA checkpoint in a text model
    stages    `pretrain_nca` and `train_text`
    compare   scratch vs NCA-initialised, what such a run can show, and a sweep over complexity bands
    cli       `nca-datagen train nca | text | compare | sweep`
"""
