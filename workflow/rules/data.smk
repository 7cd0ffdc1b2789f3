rule fetch_data:
    input:
        code=code("fetch_data"),
    output:
        update("results/data/{dataset}.npz"),
    params:
        registry=REGISTRY,
        tracked=tracked("fetch_data"),
    conda:
        ENV
    log:
        "results/logs/fetch_data/{dataset}.log",
    benchmark:
        "results/benchmarks/fetch_data/{dataset}.tsv"
    shell:
        cli("fetch-data --registry {params.registry:q} --dataset {wildcards.dataset} --out {output:q}")
