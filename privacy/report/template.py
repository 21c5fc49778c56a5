"""The report's HTML template (Jinja2).

It lives in a Python module, not a .j2 file, because a Flower app bundle carries only
Python, TOML, Markdown and JSON files: a deployed ServerApp would not find a template file.
"""

REPORT_HTML = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Privacy report: run {{ r.run.directory }}</title>
<style>
  :root { --ink: #1d2330; --muted: #5b6473; --line: #d9dee7; --soft: #f4f6fa;
          --ok: #1e7a46; --okbg: #e8f5ee; --bad: #a3262f; --badbg: #fbeaea;
          --warn: #8a5a00; --warnbg: #fff5e0; --accent: #1f5fa8; }
  * { box-sizing: border-box; }
  body { font: 15px/1.5 -apple-system, "Segoe UI", "DejaVu Sans", Arial, sans-serif;
         color: var(--ink); margin: 0; background: #fff; }
  main { max-width: 1060px; margin: 0 auto; padding: 28px 32px 60px; }
  header { border-bottom: 3px solid var(--accent); padding-bottom: 12px; margin-bottom: 20px; }
  h1 { font-size: 26px; margin: 0 0 4px; }
  h1 code { font-size: 22px; }
  h2 { font-size: 20px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
  h3 { font-size: 16px; margin: 22px 0 8px; }
  .meta { color: var(--muted); font-size: 13px; }
  .badge { display: inline-block; padding: 2px 10px; border-radius: 12px; font-weight: 600;
           font-size: 13px; vertical-align: middle; }
  .badge.ok { background: var(--okbg); color: var(--ok); }
  .badge.bad { background: var(--badbg); color: var(--bad); }
  .badge.off { background: var(--soft); color: var(--muted); }
  .summary { background: var(--soft); border-left: 6px solid var(--accent); padding: 14px 20px;
             border-radius: 4px; }
  .summary.attention { border-left-color: var(--bad); }
  .summary .headline { font-size: 18px; font-weight: 600; margin: 4px 0 10px; }
  .summary ul { margin: 0; padding-left: 20px; }
  .summary li { margin: 3px 0; }
  .findings { background: var(--badbg); border: 1px solid #e7b7bb; padding: 10px 18px;
              border-radius: 4px; margin-top: 14px; }
  .findings li.warning { color: var(--warn); }
  .findings li.error { color: var(--bad); font-weight: 600; }
  table { border-collapse: collapse; width: 100%; margin: 8px 0 14px; font-size: 13.5px; }
  th, td { border-bottom: 1px solid var(--line); padding: 5px 8px; text-align: left;
           vertical-align: top; }
  th { background: var(--soft); font-weight: 600; }
  td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
  td.num { white-space: nowrap; }
  table.facts th { width: 30%; background: none; color: var(--muted); font-weight: 500; }
  .ok { color: var(--ok); } .bad { color: var(--bad); font-weight: 600; }
  .note { color: var(--muted); font-size: 13px; }
  .lower-bound { background: var(--warnbg); border-left: 4px solid #e0a800; padding: 8px 14px; }
  details { margin: 6px 0 10px; } summary { cursor: pointer; color: var(--accent); }
  figure { margin: 10px 0 16px; text-align: center; }
  figure img { max-width: 100%; border: 1px solid var(--line); }
  figcaption { color: var(--muted); font-size: 12.5px; }
  code, .hash { font-family: "DejaVu Sans Mono", Consolas, monospace; font-size: 12px;
                word-break: break-all; }
  .grid { display: grid; grid-template-columns: 1fr 1fr; gap: 0 28px; }
  @media print {
    main { max-width: none; padding: 0; }
    h2 { break-after: avoid; } table, figure, .summary { break-inside: avoid; }
    .badge, .summary, th { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  }
</style>
</head>
<body>
<main>
<header>
  <h1>Privacy report &middot; run <code>{{ r.run.directory }}</code>
    {% if r.summary.verdict == "consistent" %}<span class="badge ok">consistent</span>
    {% else %}<span class="badge bad">needs attention</span>{% endif %}</h1>
  <div class="meta">
    Task {{ r.run.task }} &middot; {{ r.run.sites | length }} sites &middot;
    {{ r.run.rounds_completed }} of {{ r.run.rounds_planned }} rounds &middot;
    status {{ r.run.status }} ({{ r.provenance.status_time }}) &middot;
    report schema {{ r.schema_version }}
  </div>
</header>

<section class="summary{% if r.summary.verdict != 'consistent' %} attention{% endif %}">
  <div class="headline">{{ r.summary.headline }}</div>
  <ul>{% for s in r.summary.statements[1:] %}<li>{{ s }}</li>{% endfor %}</ul>
</section>
{% if r.findings %}
<section class="findings"><strong>Findings</strong>
  <ul>{% for f in r.findings %}<li class="{{ f.severity }}">{{ f.severity }}: {{ f.message }}</li>{% endfor %}</ul>
</section>
{% endif %}

{% set dp = r.sample_level_dp %}
<h2>Sample-level differential privacy
  {% if dp.enabled %}<span class="badge ok">on</span>{% else %}<span class="badge off">off</span>{% endif %}</h2>
{% if dp.enabled %}
<table class="facts">
  <tr><th>Unit of privacy</th><td>{{ dp.unit_of_privacy }}</td></tr>
  <tr><th>Adjacency</th><td>{{ dp.adjacency }}</td></tr>
  <tr><th>DP variant</th><td>{{ dp.dp_variant }}</td></tr>
  <tr><th>Algorithm</th><td>{{ dp.algorithm }}</td></tr>
  <tr><th>Trust model</th><td>{{ dp.trust_model }}</td></tr>
  <tr><th>Accountant</th><td>{{ dp.accountant.name | upper }} ({{ dp.accountant.class }}, opacus {{ dp.accountant.version }}): {{ dp.accountant.bound }}</td></tr>
  <tr><th>Gaussian DP (&mu;)</th><td>{{ dp.gdp.definition }}. Computed as the {{ dp.gdp.method }} ({{ dp.gdp.implementation }}).</td></tr>
  <tr><th>Sampling assumption</th><td>{{ dp.accountant.sampling }}</td></tr>
  <tr><th>Scope</th><td>{{ dp.scope }}</td></tr>
  <tr><th>Hyperparameter tuning</th><td>{{ dp.hyperparameter_tuning }}</td></tr>
  {% if dp.sites | selectattr("person_level") | list %}<tr><th>Per person</th><td>{{ dp.person_level_bound }}</td></tr>{% endif %}
  <tr><th>Outside this guarantee</th><td><ul>{% for o in dp.outside_guarantee %}<li>{{ o }}</li>{% endfor %}</ul></td></tr>
</table>
<p class="note">Sites whose rows read the same share one row.</p>
<table>
  <tr><th>Sites</th><th class="num">&epsilon; ({{ dp.accountant.name | upper }})</th><th class="num">&epsilon; (RDP)</th>
      <th class="num">&mu; (GDP)</th><th class="num">&delta;</th><th class="num">&epsilon; before this run</th>
      <th class="num">earlier releases / runs</th><th class="num">limit</th><th class="num">left</th>
      <th>per person</th><th class="num">rounds trained</th><th>noise</th><th>refusals</th></tr>
  {% for g in site_groups %}{% set x = g.row %}
  <tr><td>{{ g.names | names }}</td><td class="num"><strong>{{ x.epsilon }}</strong></td><td class="num">{{ x.epsilon_rdp }}</td>
      <td class="num"><strong>{{ x.mu }}</strong></td><td class="num">{{ x.delta }}</td><td class="num">{{ x.before }}</td>
      <td class="num">{{ x.releases_before }} / {{ x.runs_before }}</td><td class="num">{{ x.limit }}</td><td class="num">{{ x.left }}</td>
      <td>{{ x.person }}</td><td class="num">{{ x.rounds }}</td>
      <td>{% if x.noise.startswith("seeded") %}<span class="bad">{{ x.noise }}</span>{% else %}{{ x.noise }}{% endif %}</td>
      <td>{{ x.refusals }}</td></tr>
  {% endfor %}
</table>
<div class="note">&mu;: one curve for all &delta; &ge; {{ dp.gdp.delta_floor | delta }}, comparable across accountants. Earlier runs: distinct runs in the site's own ledger before this run's first release (&ndash;: not known from what the site reported).</div>
{% if plots['epsilon.png'] %}
<figure><img alt="cumulative epsilon per site and round" src="data:image/png;base64,{{ plots['epsilon.png'] }}">
<figcaption>Cumulative epsilon after each round, recomputed from the recorded privacy events; dashed: the site's own limit. One line per group of sites with the same epsilons.</figcaption></figure>
{% endif %}
<h3>Per round</h3>
{% for g in round_groups %}
<details{% if not fold %} open{% endif %}><summary>{{ g.names | names }}: {{ g.row | length }} release(s)</summary>
<table>
  <tr><th class="num">round</th><th>purpose</th><th class="num">&sigma;</th><th class="num">C</th><th class="num">q</th>
      <th class="num">steps</th><th class="num">epochs</th><th class="num">&epsilon; this round alone</th>
      <th class="num">&epsilon; cumulative</th><th class="num">&epsilon; cumulative (RDP)</th><th>site's claim</th><th>events from</th></tr>
  {% for x in g.row %}
  <tr><td class="num">{{ x.round }}</td><td>{{ x.purpose }}</td><td class="num">{{ x.sigma }}</td><td class="num">{{ x.clip }}</td>
      <td class="num">{{ x.q }}</td><td class="num">{{ x.steps }}</td><td class="num">{{ x.epochs }}</td>
      <td class="num">{{ x.epsilon_round }}</td><td class="num"><strong>{{ x.epsilon_cumulative }}</strong></td>
      <td class="num">{{ x.epsilon_cumulative_rdp }}</td>
      <td>{% if x.claim == "matches" %}<span class="ok">&#10003; matches</span>{% else %}<span class="bad">&#10007; {{ x.claim }}</span>{% endif %}</td>
      <td>{{ x.source }}</td></tr>
  {% endfor %}
</table>
</details>
{% endfor %}
{% else %}
<p><strong>No differential privacy requested.</strong> The run asked for plain SGD: whatever a site
trained carries no formal bound on what it reveals about one record.</p>
{% endif %}
{% if dp.sites %}
<h3>What each site decided for itself</h3>
<table>
  <tr><th>Sites</th><th>privacy floor (its own settings)</th><th>record count</th></tr>
  {% for g in floor_groups %}
  <tr><td>{{ g.names | names }}</td><td>{{ g.row.floor }}</td><td>{{ g.row.record_count }}</td></tr>
  {% endfor %}
</table>
{% endif %}

{% set c = r.client_level_dp %}
{% if c.enabled %}
<h2>Client-level differential privacy <span class="badge ok">on</span></h2>
<table class="facts">
  <tr><th>Unit of privacy</th><td>{{ c.unit_of_privacy }}</td></tr>
  <tr><th>Accountant</th><td>{{ c.accountant.name | upper }} ({{ c.accountant.implementation }} {{ c.accountant.version }}), &delta; = {{ c.delta | delta }}</td></tr>
  <tr><th>Limit</th><td>{{ c.max_epsilon | eps }}</td></tr>
  {% for x in c.stopped %}<tr><th>Stopped at round {{ x.round }}</th><td>{{ x.reason }}</td></tr>{% endfor %}
</table>
<table>
  <tr><th class="num">round</th><th class="num">&sigma;</th><th class="num">C</th><th>client sampling</th>
      <th class="num">&epsilon; (recomputed)</th><th class="num">&epsilon; (claimed)</th></tr>
  {% for x in c.rounds %}
  <tr><td class="num">{{ x.round }}</td><td class="num">{{ x.noise_multiplier | num }}</td><td class="num">{{ x.clip_norm | num }}</td>
      <td>{{ x.sampling }}</td><td class="num">{{ x.epsilon | eps }}</td><td class="num">{{ x.claimed_epsilon | eps }}</td></tr>
  {% endfor %}
</table>
{% endif %}

{% set sa = r.secure_aggregation %}
<h2>Secure aggregation
  {% if sa.enabled %}<span class="badge ok">on</span>{% else %}<span class="badge off">off</span>{% endif %}</h2>
{% if sa.enabled %}
<div class="grid">
<table class="facts">
  <tr><th>Protocol</th><td>{{ sa.protocol }}</td></tr>
  <tr><th>Protects</th><td>{{ sa.protects }}</td></tr>
  <tr><th>Transport</th><td>{{ sa.transport.mode }}: {{ sa.transport.note }}</td></tr>
</table>
<table class="facts">
  <tr><th>Neighbours</th><td>{{ sa.parameters.neighbours }}</td></tr>
  <tr><th>Reconstruction threshold</th><td>{{ sa.parameters.reconstruction_threshold | num(3) }}</td></tr>
  <tr><th>Clipping range</th><td>&plusmn;{{ sa.parameters.clipping_range }}</td></tr>
  <tr><th>Quantization bits</th><td>{{ sa.parameters.quantization_bits }}</td></tr>
  <tr><th>Stage timeout</th><td>{{ sa.parameters.stage_timeout_s }} s</td></tr>
</table>
</div>
<table>
  <tr><th class="num">round</th><th class="num">sampled</th><th class="num">contributors</th><th>dropouts</th>
      <th class="num">rejections</th><th>aborted</th><th class="num">values out of range</th></tr>
  {% for x in sa.rounds %}
  <tr><td class="num">{{ x.round }}</td><td class="num">{{ x.sampled }}</td><td class="num">{{ x.contributors }}</td>
      <td>{% for node, why in x.dropped.items() %}node {{ node }}: {{ why }}{% if not loop.last %}; {% endif %}{% else %}none{% endfor %}</td>
      <td class="num">{{ x.rejections | length }}</td>
      <td>{% if x.aborted %}<span class="bad">{{ x.aborted }}</span>{% else %}no{% endif %}</td>
      <td class="num">{{ x.out_of_range }}</td></tr>
  {% endfor %}
</table>
{% else %}
<p>Secure aggregation was off: the server saw each site's update in the clear.</p>
{% endif %}

<h2>Anonymization and cleansing</h2>
{% if r.anonymization %}
<details{% if not fold %} open{% endif %}><summary>{{ r.anonymization | length }} site(s) applied an anonymization policy before training: per-site results</summary>
<table>
  <tr><th>sites</th><th>release</th><th class="num">k</th><th class="num">l</th><th class="num">t</th>
      <th class="num">rows in</th><th>cleansing dropped</th><th>per person</th><th class="num">cells imputed</th>
      <th class="num">suppressed</th><th class="num">rows out</th></tr>
  {% for g in anonymization_groups %}{% set x = g.row %}
  <tr><td>{{ g.names | names }}</td>
      <td>{% if x.release == "pseudonymized" %}<span class="bad">pseudonymized</span> (not anonymized){% else %}{{ x.release }}{% endif %}</td>
      <td class="num">{{ x.k }}</td><td class="num">{{ x.l }}</td><td class="num">{{ x.t }}</td><td class="num">{{ x.rows_in }}</td>
      <td>{{ x.dropped }}</td><td>{{ x.person }}</td><td class="num">{{ x.imputed }}</td>
      <td class="num">{{ x.suppressed }}</td><td class="num">{{ x.rows_out }}</td></tr>
  {% endfor %}
</table>
{% for a in r.anonymization %}
<details><summary>{{ a.site }}: policy {{ a.policy }}, {{ a.method }}</summary>
{% if a.release_note %}<p>{{ a.release_note }}.</p>{% endif %}
<table class="facts">
  <tr><th>Targets</th><td>{% for k, v in (a.targets or {}).items() %}{{ k }} = {{ v }}{% if not loop.last %}, {% endif %}{% endfor %}</td></tr>
  <tr><th>l entropy</th><td>{{ a.achieved.l_entropy | num }}</td></tr>
  <tr><th>Rows in / after cleansing / out</th><td>{{ a.rows_in }} / {{ a.rows_after_cleaning | dash }} / {{ a.rows_out }}</td></tr>
  <tr><th>Equivalence classes</th><td>{{ a.equivalence_classes }}</td></tr>
  <tr><th>Re-identification risk</th><td>{% for k, v in a.risk.items() %}{{ k }} {{ v | num(3) }}{% if not loop.last %}, {% endif %}{% endfor %}</td></tr>
  {% if a.cleaning %}<tr><th>Cleansing</th><td>{% if a.cleaning.declared %}declared in the policy{% else %}no [cleaning] table: the table was only checked{% endif %}; duplicates {{ a.cleaning.duplicates.rule or "no rule" }}, {{ a.cleaning.duplicates.found }} found; clipped {{ a.cleaning.cells_clipped }}, recoded {{ a.cleaning.cells_recoded }}</td></tr>{% endif %}
</table>
</details>
{% endfor %}
{% for g in column_groups %}
<details><summary>Columns and cleansing rules: {{ g.names | names }}</summary>
<table>
  <tr><th>column</th><th>role</th><th>transformation</th><th>cleansing rules</th><th>cleansing counts</th></tr>
  {% for x in g.row %}<tr><td>{{ x.column }}</td><td>{{ x.role }}</td><td>{{ x.transformation }}</td><td>{{ x.rules }}</td><td>{{ x.counts }}</td></tr>{% endfor %}
</table>
</details>
{% endfor %}
</details>
{% else %}
<p class="note">No site applied an anonymization policy in this run.</p>
{% endif %}

{% set u = r.utility %}
<h2>Model utility</h2>
{% if plots['utility.png'] %}
<figure><img alt="accuracy per round" src="data:image/png;base64,{{ plots['utility.png'] }}">
<figcaption>Global model on {{ u.test_set }}; the sites' evaluation is the {{ u.client_eval }}.</figcaption></figure>
{% endif %}
<table>
  <tr><th class="num">round</th><th class="num">test accuracy</th><th class="num">test loss</th>
      <th class="num">site eval accuracy (DP)</th>
      <th class="num">trained</th><th class="num">refused</th><th class="num">failed</th></tr>
  {% for x in u.rounds %}
  <tr><td class="num">{{ x.round }}</td><td class="num">{{ x.test_accuracy | pct }}</td><td class="num">{{ x.test_loss | num(4) }}</td>
      <td class="num">{{ x.client_eval_accuracy | pct }}</td>
      <td class="num">{{ x.sites_trained | dash }}</td><td class="num">{{ x.sites_refused | dash }}</td><td class="num">{{ x.sites_failed | dash }}</td></tr>
  {% endfor %}
</table>

<h2>Empirical audit (membership inference)</h2>
{% set a = r.audit %}
{% if a %}
<div class="lower-bound"><strong>{{ a.eps_lb_label }}.</strong> The accounted epsilon above is an upper bound;
this attack's implied epsilon should lie below it.</div>
<div class="grid">
<table class="facts">
  <tr><th>Attack</th><td>{{ a.attack }}</td></tr>
  <tr><th>Records</th><td>{{ a.members }} members, {{ a.nonmembers }} held-out non-members</td></tr>
  <tr><th>AUC</th><td>{{ a.auc | num(3) }}</td></tr>
  <tr><th>Best accuracy</th><td>{{ a.best_accuracy | pct }}</td></tr>
  {% for x in a.low_fpr %}
  <tr><th>At {{ x.fpr | pct(1) }} FPR</th><td>{% if x.resolvable %}TPR {{ x.tpr | pct(2) }} measured{% if x.tpr_lower is defined and x.tpr_lower is not none %} (&ge; {{ x.tpr_lower | pct(2) }}), FPR {{ x.fpr_measured | pct(2) }} (&le; {{ x.fpr_upper | pct(2) }}){% endif %} &rarr; &epsilon; &ge; {{ x.eps_lb | eps }}{% else %}not measurable with {{ a.nonmembers }} non-members{% endif %}</td></tr>
  {% endfor %}
  <tr><th>{% if a.confidence %}Epsilon lower bound at {{ a.confidence | pct(0) }} confidence{% else %}Implied epsilon (point estimate, no confidence level){% endif %}</th><td><strong>{{ a.eps_lb | eps }}</strong> (&delta; = {{ a.delta | delta }}){% if max_claimed is not none %} vs accounted upper bound {{ max_claimed | eps }}{% endif %}</td></tr>
</table>
{% if plots['audit-roc.png'] %}<figure><img alt="ROC of the attack" src="data:image/png;base64,{{ plots['audit-roc.png'] }}"></figure>{% endif %}
</div>
{% else %}
<p class="note">No empirical audit was run for this report.</p>
{% endif %}

{% set p = r.provenance %}
<h2>Provenance</h2>
<div class="grid">
<table class="facts">
  {% for k, v in p.software.items() %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}
</table>
<table class="facts">
  <tr><th>Config sha256</th><td class="hash">{{ p.config_sha256 }}</td></tr>
  <tr><th>Run ids</th><td>{{ p.run_ids | join(", ") or "not recorded" }}</td></tr>
  <tr><th>Ledger created</th><td>{{ p.ledger_created }}</td></tr>
  <tr><th>First / last event</th><td>{{ p.first_event }}<br>{{ p.last_event }}</td></tr>
  <tr><th>Status</th><td>{{ p.status }} at {{ p.status_time }}</td></tr>
</table>
</div>
{% if p.datasets %}
<details{% if not fold %} open{% endif %}><summary>Dataset identities of {{ p.datasets | length }} site ledger(s)</summary>
<table>
  <tr><th>site</th><th>dataset identity (sha256)</th><th>site ledger</th></tr>
  {% for d in p.datasets %}<tr><td>{{ d.site }}</td><td class="hash">{{ d.dataset_sha256 }}</td><td><code>{{ d.ledger }}</code></td></tr>{% endfor %}
</table>
</details>
{% endif %}
<details><summary>Configuration ({{ p.config | length }} settings, sha256 above)</summary>
<table class="facts">
  {% for k, v in p.config | dictsort %}<tr><th>{{ k }}</th><td><code>{{ v }}</code></td></tr>{% endfor %}
</table>
</details>

{% set i = r.integrity %}
<h2>Integrity</h2>
<table>
  <tr><th>ledger</th><th class="num">rows</th><th>chain head</th></tr>
  <tr><td><code>{{ i.run_ledger.file }}</code></td><td class="num">{{ i.run_ledger.rows }}</td><td class="hash">{{ i.run_ledger.head }}</td></tr>
</table>
{% if i.site_ledgers %}
<details{% if not fold %} open{% endif %}><summary>{{ i.site_ledgers | length }} site ledger(s)</summary>
<table>
  <tr><th>ledger</th><th class="num">rows</th><th>chain head</th></tr>
  {% for l in i.site_ledgers %}<tr><td><code>{{ l.file }}</code></td><td class="num">{{ l.rows }}</td><td class="hash">{{ l.head }}</td></tr>{% endfor %}
</table>
</details>
{% endif %}
{% if i.signature %}
<p>report.json is signed with {{ i.signature.algorithm }}; signer key sha256
<span class="hash">{{ i.signature.public_key_sha256 }}</span>. Check with
<code>fedvault report --verify {{ r.run.directory }} --public-key signing.key.pub</code>.</p>
{% endif %}
<p class="note">{{ i.hash_chain }}.</p>
</main>
</body>
</html>
"""
