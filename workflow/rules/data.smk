rule fetch_data:
    output:
        "results/data/{dataset}.npz",
    params:
        registry=REGISTRY,
        spec=lambda w: REG.datasets[w.dataset].model_dump_json(),
    conda:
        ENV
    log:
        "results/logs/fetch_data/{dataset}.log",
    shell:
        "simudy --log {log} fetch-data --registry {params.registry} --dataset {wildcards.dataset}"
        " --out {output}"
