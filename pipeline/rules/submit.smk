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
        **job_resources(config, ROLE_SPLIT, "infer_submit"),
    conda:
        CONDA_ENV
    shell:
        "mtgan infer --sections {params.sections} --model {input.model} --manifest {input.manifest} --rule {wildcards.rule} "
        "--out {output.table} --out-accuracy {output.accuracy} --threads {threads} > {log} 2>&1"


rule submission:
    # One job per variant and rule: the method alone and, with merge.ensemble, its ensemble.
    input:
        index=rules.data.output.index,
        rois=f"{ROOT}/rois/submit.parquet",
        inference=lambda wildcards: inference_input(f"{SUBMIT}/infer", wildcards.alone),
    output:
        **merge_outputs(f"{SUBMIT}/detections_{{split}}_{{alone}}", "_results.json", config),
    wildcard_constraints:
        alone=merged_method_pattern(config),
    params:
        sections=sections_json(config, "merge"),
        ensemble=lambda wildcards, output: out_ensemble_arg(output),
    log:
        f"{LOGS}/submission_{{split}}_{{alone}}.log",
    resources:
        **job_resources(config, ROLE_SPLIT, "submission"),
    conda:
        CONDA_ENV
    shell:
        "mtgan submission --sections {params.sections} --data-index {input.index} --split {wildcards.split} "
        "--method {wildcards.alone} --rois {input.rois} --inference {input.inference} "
        "--out {output.results} {params.ensemble} > {log} 2>&1"


rule submission_baseline:
    input:
        index=rules.data.output.index,
        detections=lambda wildcards: f"{ROOT}/detect/{SUBMIT_SPLIT}_results.json",
    output:
        results=f"{SUBMIT}/detections_{{split}}_baseline_results.json",
    params:
        sections=sections_json(config, "merge"),
    log:
        f"{LOGS}/submission_{{split}}_baseline.log",
    resources:
        **job_resources(config, ROLE_SPLIT, "submission_baseline"),
    conda:
        CONDA_ENV
    shell:
        "mtgan submission --sections {params.sections} --data-index {input.index} --split {wildcards.split} "
        "--method baseline --detections {input.detections} --out {output.results} > {log} 2>&1"
