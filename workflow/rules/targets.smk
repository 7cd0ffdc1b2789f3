# One target per experiment in the registry, at the chosen profile: `snakemake fig1 ...`.
for _name in REG.experiments:

    rule:
        name:
            _name
        input:
            report_files(_name, PROFILE),


# One target per group: its experiments' reports and a table of the group's methods.
for _name, _group in REG.groups.items():

    rule:
        name:
            _name
        input:
            [f for e in _group.experiments for f in report_files(e, PROFILE)],
            f"results/{_name}_{PROFILE}.md",


rule tables:
    input:
        f"results/table_{PROFILE}.md",
