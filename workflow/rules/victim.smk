rule pretrain:
    input:
        data=dataset_file,
        code=code("pretrain"),
    output:
        info=update(f"{RUN}/init/init.json"),
        theta0=update(f"{RUN}/init/theta0.safetensors"),
    params:
        registry=REGISTRY,
        tracked=tracked("pretrain"),
    resources:
        gpu=1,
    conda:
        ENV
    threads: HEAVY
    log:
        f"{RUN}/logs/pretrain.log",
    benchmark:
        f"{RUN}/benchmarks/pretrain.tsv"
    shell:
        cli(
            "pretrain --registry {params.registry:q} --experiment {wildcards.experiment} --profile {wildcards.profile}"
            " --data {input.data:q} --out-dir \"$(dirname {output.theta0:q})\""
            + SET_ARGS
        )


rule finetune_victim:
    input:
        data=dataset_file,
        theta0=rules.pretrain.output.theta0,
        info=rules.pretrain.output.info,
        code=code("finetune_victim"),
    output:
        meta=update(f"{RUN}/victim/victim.json"),
        theta0=update(f"{RUN}/victim/theta0.safetensors"),
        thetaf=update(f"{RUN}/victim/thetaf.safetensors"),
        truth=update(f"{RUN}/victim/truth.npz"),
    params:
        registry=REGISTRY,
        tracked=tracked("finetune_victim"),
    resources:
        gpu=1,
    conda:
        ENV
    threads: HEAVY
    log:
        f"{RUN}/logs/finetune_victim.log",
    benchmark:
        f"{RUN}/benchmarks/finetune_victim.tsv"
    shell:
        cli(
            "finetune-victim --registry {params.registry:q} --experiment {wildcards.experiment}"
            " --profile {wildcards.profile} --data {input.data:q} --init-dir \"$(dirname {input.theta0:q})\""
            " --out-dir \"$(dirname {output.meta:q})\""
            + SET_ARGS
        )
