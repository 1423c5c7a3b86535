# Images without ground truth (data.submit_split, e.g. COCO test-dev): detect, ROIs, shards (role
# submit), each variant's inference, and every method's results file for upload; nothing is scored.

SUBMIT = f"{ROOT}/submit"


rule infer_submit:
    input:
        model=rules.train_mtgan.output.model,
        manifest=f"{ROOT}/shards/submit/manifest.json",
    output:
        table=f"{SUBMIT}/infer/{{rule}}/{{variant}}.parquet",
        accuracy=f"{SUBMIT}/infer/{{rule}}/{{variant}}_accuracy.json",
    params:
        sections=lambda wildcards: infer_sections(config, wildcards.rule),
    log:
        f"{LOGS}/infer_submit_{{rule}}_{{variant}}.log",
    threads: TORCH_THREADS
    resources:
        gpu=1,
    conda:
        "../../envs/mtgan.yaml"
    shell:
        "mtgan infer --sections {params.sections} --model {input.model} --manifest {input.manifest} --rule {wildcards.rule} "
        "--out {output.table} --out-accuracy {output.accuracy} --threads {threads} > {log} 2>&1"


rule submission:
    input:
        index=rules.data.output.index,
        detections=lambda wildcards: f"{ROOT}/detect/{SUBMIT_SPLIT}_results.json",
        rois=f"{ROOT}/rois/submit.parquet",
        inference=lambda wildcards: inference_input(f"{SUBMIT}/infer", wildcards.method),
    output:
        results=f"{SUBMIT}/detections_{{split}}_{{method}}_results.json",
    params:
        sections=sections_json(config, "merge"),
        inference=lambda wildcards, input: f"--inference {input.inference}" if input.inference else "",
        ensemble=lambda wildcards: "--ensemble" if wildcards.method.endswith("_ensemble") else "",
    log:
        f"{LOGS}/submission_{{split}}_{{method}}.log",
    conda:
        "../../envs/mtgan.yaml"
    shell:
        "mtgan submission --sections {params.sections} --data-index {input.index} --split {wildcards.split} "
        "--method {wildcards.method} --detections {input.detections} --rois {input.rois} {params.inference} "
        "{params.ensemble} --out {output.results} > {log} 2>&1"
