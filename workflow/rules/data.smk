rule fetch_data:
    output:
        train="results/data/{dataset}/train.npz",
        test="results/data/{dataset}/test.npz",
    params:
        registry=REGISTRY,
        spec=lambda w: REG.datasets[w.dataset].model_dump_json(),
    conda:
        ENV
    log:
        "results/logs/fetch_data/{dataset}.log",
    shell:
        "simudy --log {log} fetch-data --registry {params.registry} --dataset {wildcards.dataset}"
        " --out-dir results/data/{wildcards.dataset}"
