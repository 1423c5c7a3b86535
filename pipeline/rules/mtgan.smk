# Stage 5: one training job per configured MTGAN variant, on the training split's shards.


rule train_mtgan:
    input:
        manifest=f"{ROOT}/shards/train/manifest.json",
    output:
        model=f"{ROOT}/mtgan/{{variant}}/model.pt",
        metrics=f"{ROOT}/mtgan/{{variant}}/metrics.jsonl",
        curves=f"{ROOT}/mtgan/{{variant}}/losses.png",
    params:
        # Not the list of variants: adding a variant must not retrain the others.
        sections=sections_json(config, "mtgan", drop=("variants",)),
        out_dir=lambda wildcards, output: os.path.dirname(output.model),
    log:
        f"{LOGS}/train_mtgan_{{variant}}.log",
    benchmark:
        f"{BENCHMARKS}/train_mtgan_{{variant}}.tsv"
    threads: TORCH_THREADS
    resources:
        **job_resources(config, ROLE_SPLIT, "train_mtgan"),
    conda:
        CONDA_ENV
    shell:
        # With more than one GPU (resources gpu > 1, e.g. from profiles/slurm), through torchrun (DDP).
        "if [ {resources.gpu} -gt 1 ]; then launch='torchrun --standalone --nproc_per_node {resources.gpu} -m pipeline.cli'; "
        "else launch=mtgan; fi; "
        "$launch train-mtgan --sections {params.sections} --variant {wildcards.variant} --manifest {input.manifest} "
        "--out {params.out_dir} --threads {threads} > {log} 2>&1"
