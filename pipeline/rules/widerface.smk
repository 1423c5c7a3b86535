# WIDER FACE: the official Easy / Medium / Hard evaluation of every method (target eval_widerface).


rule score_widerface:
    input:
        index=rules.data.output.index,
        results=lambda wildcards: score_results_input(ROOT, TEST_SPLIT, wildcards.method),
        ground_truth=lambda wildcards: widerface_ground_truth_files(config),
    output:
        json=f"{ROOT}/widerface/{{method}}.json",
        curves=f"{ROOT}/widerface/{{method}}_pr.npz",
        predictions=directory(f"{ROOT}/widerface/{{method}}_predictions"),
    params:
        split=TEST_SPLIT,
        gt_dir=lambda wildcards, input: os.path.dirname(input.ground_truth[0]),
    log:
        f"{LOGS}/score_widerface_{{method}}.log",
    resources:
        **job_resources(config, ROLE_SPLIT, "score_widerface"),
    conda:
        CONDA_ENV
    shell:
        "mtgan widerface-score --data-index {input.index} --split {params.split} --results {input.results} "
        "--method {wildcards.method} --ground-truth {params.gt_dir} --out-json {output.json} "
        "--out-curves {output.curves} --out-predictions {output.predictions} > {log} 2>&1"


rule table_widerface:
    input:
        scores=expand(f"{ROOT}/widerface/{{method}}.json", method=METHODS),
        curves=expand(f"{ROOT}/widerface/{{method}}_pr.npz", method=METHODS),
    output:
        markdown=f"{ROOT}/eval/widerface.md",
        csv=report(f"{ROOT}/eval/widerface.csv", caption="captions/widerface.rst", category="1. Metrics",
                   subcategory="WIDER FACE"),
        figure=report(f"{ROOT}/eval/widerface_pr.png", caption="captions/widerface.rst", category="1. Metrics",
                      subcategory="WIDER FACE"),
    params:
        outputs=lambda wildcards, output: out_args(output),
    log:
        f"{LOGS}/table_widerface.log",
    resources:
        **job_resources(config, ROLE_SPLIT, "table_widerface"),
    conda:
        CONDA_ENV
    shell:
        "mtgan widerface-table {params.outputs} {input.scores} > {log} 2>&1"
