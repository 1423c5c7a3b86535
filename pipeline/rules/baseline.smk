# Stages 2-3: the baseline detector (trained here, from torchvision, or imported), its top-K
# detections per image, the ROIs labelled against the ground truth, and the baseline's score.


rule train_baseline:
    input:
        index=rules.data.output.index,
    output:
        model=f"{ROOT}/baseline/model.pt",
        metrics=f"{ROOT}/baseline/metrics.jsonl",
        curves=f"{ROOT}/baseline/losses.png",
    params:
        sections=sections_json(config, "data", "detector", "train_baseline", drop=(*inactive_data_sources(config), "dev_split")),
        out_dir=lambda wildcards, output: os.path.dirname(output.model),
    log:
        f"{LOGS}/train_baseline.log",
    benchmark:
        f"{BENCHMARKS}/train_baseline.tsv"
    threads: TORCH_THREADS
    resources:
        **job_resources(config, ROLE_SPLIT, "train_baseline"),
    conda:
        CONDA_ENV
    shell:
        "mtgan train-baseline --sections {params.sections} --data-index {input.index} "
        "--out {params.out_dir} --threads {threads} > {log} 2>&1"


rule detect:
    input:
        index=rules.data.output.index,
        model=lambda wildcards: baseline_model_input(config, ROOT),
        imported=lambda wildcards: detect_inputs(config, wildcards.split),
    output:
        table=f"{ROOT}/detect/{{split}}.parquet",
    params:
        sections=sections_json(config, "detector"),
        model=lambda wildcards, input: f"--model {input.model}" if input.model else "",
        on_bad_image=config["shards"]["on_bad_image"],
    log:
        f"{LOGS}/detect_{{split}}.log",
    benchmark:
        f"{BENCHMARKS}/detect_{{split}}.tsv"
    threads: TORCH_THREADS
    resources:
        **job_resources(config, ROLE_SPLIT, "detect"),
    conda:
        CONDA_ENV
    shell:
        "mtgan detect --sections {params.sections} --data-index {input.index} --split {wildcards.split} "
        "{params.model} --out-table {output.table} --on-bad-image {params.on_bad_image} "
        "--threads {threads} > {log} 2>&1"


rule detect_results:
    # The baseline's detections as a COCO results JSON: only for a split that is scored or
    # submitted (COCO train's would be over a GB that nothing reads).
    input:
        table=f"{ROOT}/detect/{{split}}.parquet",
    output:
        results=f"{ROOT}/detect/{{split}}_results.json",
    log:
        f"{LOGS}/detect_results_{{split}}.log",
    benchmark:
        f"{BENCHMARKS}/detect_results_{{split}}.tsv"
    resources:
        **job_resources(config, ROLE_SPLIT, "detect_results"),
    conda:
        CONDA_ENV
    shell:
        "mtgan results --detections {input.table} --out {output.results} > {log} 2>&1"


rule rois:
    input:
        index=rules.data.output.index,
        detections=lambda wildcards: f"{ROOT}/detect/{ROLE_SPLIT[wildcards.role]}.parquet",
    output:
        table=f"{ROOT}/rois/{{role}}.parquet",
        counts=f"{ROOT}/rois/{{role}}_counts.md",
    params:
        sections=sections_json(config, "rois"),
        split=lambda wildcards: ROLE_SPLIT[wildcards.role],
    log:
        f"{LOGS}/rois_{{role}}.log",
    benchmark:
        f"{BENCHMARKS}/rois_{{role}}.tsv"
    resources:
        **job_resources(config, ROLE_SPLIT, "rois"),
    conda:
        CONDA_ENV
    shell:
        "mtgan rois --sections {params.sections} --data-index {input.index} --split {params.split} --role {wildcards.role} "
        "--detections {input.detections} --out {output.table} --out-counts {output.counts} > {log} 2>&1"
