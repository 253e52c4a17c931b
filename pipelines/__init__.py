"""Executors and drivers (imported as `nca_datagen.pipelines`): they decide where shards run, never what
a shard contains."""
