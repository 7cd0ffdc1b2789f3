rule pretrain:
    input:
        dataset_file,
    output:
        theta0=f"{RUN}/init/theta0.safetensors",
        info=f"{RUN}/init/init.json",
    params:
        registry=REGISTRY,
        init=section("init"),
    resources:
        gpu=1,
    conda:
        ENV
    threads: workflow.cores
    log:
        f"{RUN}/logs/pretrain.log",
    shell:
        "simudy --log {log} pretrain --registry {params.registry}"
        " --experiment {wildcards.experiment} --profile {wildcards.profile}"
        " --data {input} --out-dir $(dirname {output.theta0})"


rule finetune_victim:
    input:
        data=dataset_file,
        theta0=rules.pretrain.output.theta0,
        info=rules.pretrain.output.info,
    output:
        theta0=f"{RUN}/victim/theta0.safetensors",
        thetaf=f"{RUN}/victim/thetaf.safetensors",
        truth=f"{RUN}/victim/truth.npz",
        meta=f"{RUN}/victim/victim.json",
    params:
        registry=REGISTRY,
        victim=section("victim"),
    resources:
        gpu=1,
    conda:
        ENV
    threads: workflow.cores
    log:
        f"{RUN}/logs/finetune_victim.log",
    shell:
        "simudy --log {log} finetune-victim --registry {params.registry}"
        " --experiment {wildcards.experiment} --profile {wildcards.profile}"
        " --data {input.data} --init-dir $(dirname {input.theta0})"
        " --out-dir $(dirname {output.meta})"
