# One target per experiment in the registry, at the chosen profile: `snakemake fig1 ...`.
for _name in REG.experiments:

    rule:
        name:
            _name
        input:
            report_files(_name, PROFILE),


rule tables:
    input:
        f"results/table_{PROFILE}.md",
