# Stage 4: HR/LR ROI crops in HDF5 shards: a plan per role (which ROIs, which chunk), one job per
# image chunk, then a manifest per role (train: the training split's ROIs, sampled; test: the test
# split's ROIs, all of them).

SHARD_CHUNKS = range(config["shards"]["num_chunks"])


rule shards_plan:
    input:
        index=rules.data.output.index,
        rois=rules.rois.output.table,
    output:
        plan=f"{ROOT}/shards/{{role}}/plan.parquet",
        images=f"{ROOT}/shards/{{role}}/images.parquet",
    params:
        sections=lambda wildcards: shard_sections(config, wildcards.role),
        split=lambda wildcards: ROLE_SPLIT[wildcards.role],
    log:
        f"{LOGS}/shards_plan_{{role}}.log",
    benchmark:
        f"{BENCHMARKS}/shards_plan_{{role}}.tsv"
    resources:
        **job_resources(config, ROLE_SPLIT, "shards_plan"),
    conda:
        CONDA_ENV
    shell:
        "mtgan shards-plan --sections {params.sections} --data-index {input.index} --split {params.split} --role {wildcards.role} "
        "--rois {input.rois} --out-plan {output.plan} --out-images {output.images} > {log} 2>&1"


rule shards:
    input:
        index=rules.data.output.index,
        rois=rules.rois.output.table,
        plan=rules.shards_plan.output.plan,
        images=rules.shards_plan.output.images,
    output:
        chunk=directory(f"{ROOT}/shards/{{role}}/chunk-{{chunk}}"),
    params:
        sections=lambda wildcards: shard_sections(config, wildcards.role),
        split=lambda wildcards: ROLE_SPLIT[wildcards.role],
    log:
        f"{LOGS}/shards_{{role}}_{{chunk}}.log",
    benchmark:
        f"{BENCHMARKS}/shards_{{role}}_{{chunk}}.tsv"
    threads: POOL_THREADS
    resources:
        **job_resources(config, ROLE_SPLIT, "shards"),
    conda:
        CONDA_ENV
    shell:
        "mtgan shards --sections {params.sections} --data-index {input.index} --split {params.split} --role {wildcards.role} "
        "--rois {input.rois} --plan {input.plan} --images {input.images} --chunk {wildcards.chunk} --out {output.chunk} "
        "--jobs {threads} > {log} 2>&1"


rule shards_manifest:
    input:
        rois=rules.rois.output.table,
        plan=rules.shards_plan.output.plan,
        chunks=expand(f"{ROOT}/shards/{{{{role}}}}/chunk-{{chunk}}", chunk=SHARD_CHUNKS),
    output:
        manifest=f"{ROOT}/shards/{{role}}/manifest.json",
    params:
        sections=lambda wildcards: shard_sections(config, wildcards.role),
        split=lambda wildcards: ROLE_SPLIT[wildcards.role],
    log:
        f"{LOGS}/shards_manifest_{{role}}.log",
    benchmark:
        f"{BENCHMARKS}/shards_manifest_{{role}}.tsv"
    resources:
        **job_resources(config, ROLE_SPLIT, "shards_manifest"),
    conda:
        CONDA_ENV
    shell:
        "mtgan shards-manifest --sections {params.sections} --split {params.split} --role {wildcards.role} "
        "--rois {input.rois} --plan {input.plan} --out {output.manifest} {input.chunks} > {log} 2>&1"
