# One target per experiment in the registry that has the chosen profile: `snakemake fig1 ...`.
for _name in (e for e in REG.experiments if has_profile(e, PROFILE)):

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


# Every sweep's table, rank correlations and figure (Figs. 2, 3, 7, 9, 10 and their variants).
rule sweeps:
    input:
        [f for e in REG.experiments if has_sweep(e, PROFILE) for f in report_files(e, PROFILE)],
