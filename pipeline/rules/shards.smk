# Stage 4: HR/LR ROI crops in HDF5 shards, one job per image chunk, then a manifest per split.

SHARD_CHUNKS = range(config["shards"]["num_chunks"])


rule shards:
    input:
        index=rules.data.output.index,
        rois=rules.rois.output.table,
    output:
        chunk=directory(f"{ROOT}/shards/{{split}}/chunk-{{chunk}}"),
    params:
        sections=sections_json(config, "data", "shards"),
    log:
        f"{LOGS}/shards_{{split}}_{{chunk}}.log",
    benchmark:
        f"{BENCHMARKS}/shards_{{split}}_{{chunk}}.tsv"
    threads: 2
    conda:
        "../../envs/mtgan.yaml"
    shell:
        "mtgan shards --sections {params.sections} --data-index {input.index} --split {wildcards.split} "
        "--rois {input.rois} --chunk {wildcards.chunk} --out {output.chunk} --jobs {threads} > {log} 2>&1"


rule shards_manifest:
    input:
        rois=rules.rois.output.table,
        chunks=expand(f"{ROOT}/shards/{{{{split}}}}/chunk-{{chunk}}", chunk=SHARD_CHUNKS),
    output:
        manifest=f"{ROOT}/shards/{{split}}/manifest.json",
    params:
        sections=sections_json(config, "data", "shards"),
    log:
        f"{LOGS}/shards_manifest_{{split}}.log",
    conda:
        "../../envs/mtgan.yaml"
    shell:
        "mtgan shards-manifest --sections {params.sections} --split {wildcards.split} --rois {input.rois} "
        "--out {output.manifest} {input.chunks} > {log} 2>&1"
