# Stage 1, data: the dataset as COCO JSON per split plus an image root (pipeline/data/stage.py).

DATA_DIR = f"{ROOT}/data"


rule data:
    input:
        lambda wildcards: data_input_files(config),
    output:
        index=f"{DATA_DIR}/index.json",
        splits=expand("{data_dir}/{split}.json", data_dir=DATA_DIR, split=data_splits(config["data"])),
        stats=f"{DATA_DIR}/stats.json",
        stats_md=f"{DATA_DIR}/stats.md",
        preview=f"{DATA_DIR}/preview.png",
    params:
        sections=sections_json(config, "data", drop=(*inactive_data_sources(config), "dev_split")),
        out_dir=lambda wildcards, output: os.path.dirname(output.index),
    log:
        f"{LOGS}/data.log",
    benchmark:
        f"{BENCHMARKS}/data.tsv"
    threads: POOL_THREADS
    resources:
        **job_resources(config, ROLE_SPLIT, "data"),
    conda:
        CONDA_ENV
    shell:
        "mtgan data --sections {params.sections} --out {params.out_dir} --jobs {threads} > {log} 2>&1"
