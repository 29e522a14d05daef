//! A comparison as a terminal table and as one self-contained HTML page (inline CSS and
//! SVG charts, no scripts, nothing fetched).

use super::verdict::Verdict;
use super::{Comparison, ModeResult};
use crate::security::seccomp;

/// One cell: its text, a verdict (for colour) and a detail line.
type Cell = (String, Option<Verdict>, String);

/// One table row: a label and a cell per mode.
struct Row {
    section: &'static str,
    label: String,
    cells: Vec<Cell>,
}

fn ms(m: &ModeResult, phase: &str) -> Option<f64> {
    m.timings_ms
        .iter()
        .find(|(n, _)| n == phase)
        .map(|(_, v)| *v)
}

fn rows(c: &Comparison) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut add = |section, label: &str, f: &dyn Fn(&ModeResult) -> Cell| {
        rows.push(Row {
            section,
            label: label.to_owned(),
            cells: c.modes.iter().map(f).collect(),
        })
    };
    add("identity", "kernel", &|m| {
        let v = if m.on_host_kernel {
            Verdict::Host
        } else {
            Verdict::Contained
        };
        (
            m.probe.identity.kernel.clone(),
            Some(v),
            format!("boot id {}", m.probe.identity.boot_id),
        )
    });
    add("identity", "CPUs / memory", &|m| {
        let i = &m.probe.identity;
        (
            format!("{} / {} MiB", i.cpus, i.memory_mib),
            None,
            i.cpu_model.clone(),
        )
    });
    add("identity", "capabilities", &|m| {
        let i = &m.probe.identity;
        (
            format!(
                "{} ({})",
                i.capabilities,
                i.capabilities_hex.trim_start_matches('0')
            ),
            None,
            String::new(),
        )
    });
    add("identity", "seccomp / no_new_privs", &|m| {
        let i = &m.probe.identity;
        let s = if i.seccomp_mode == 2 {
            "filter"
        } else {
            "none"
        };
        (
            format!("{s} / {}", if i.no_new_privs { "on" } else { "off" }),
            None,
            String::new(),
        )
    });
    let probes: Vec<(String, String, String)> = c
        .modes
        .first()
        .map(|m| {
            m.probe
                .results
                .iter()
                .map(|r| {
                    (
                        r.id.clone(),
                        r.title.clone(),
                        format!("{:?}", r.group).to_lowercase(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    for (id, title, group) in probes {
        let section = if group == "visibility" {
            "sees of the host"
        } else {
            "can do"
        };
        add(section, &title, &|m| {
            let r = m.probe.results.iter().find(|r| r.id == id);
            let v = m.verdicts.get(&id).copied().unwrap_or(Verdict::Unavailable);
            (
                v.label().to_owned(),
                Some(v),
                r.map(|r| r.detail.clone()).unwrap_or_default(),
            )
        });
    }
    add("attack surface", "syscalls allowed", &|m| {
        let n = match m.surface.syscalls_allowed {
            Some(n) => format!("{n} of {}", seccomp::X86_64_SYSCALLS),
            None => "all (no filter)".into(),
        };
        let mut detail = m.surface.host_entry_points.clone();
        if !m.vmm_metrics.is_empty() {
            detail.push_str(&format!(
                "; the VMM's counters: {}",
                m.vmm_metrics.join("; ")
            ));
        }
        (format!("{n} → {}", m.surface.syscalls_reach), None, detail)
    });
    add("cost", "start to exit (run --rm)", &|m| {
        let total = ms(m, "total").unwrap_or(m.wall_ms);
        (format!("{total:.0} ms"), None, phases(m))
    });
    add("cost", "idle host memory (PSS)", &|m| {
        let v = m
            .idle_pss_kib
            .map(|k| format!("{:.1} MiB", k as f64 / 1024.0));
        (v.unwrap_or_else(|| "-".into()), None, String::new())
    });
    // `--no-costs`: nothing was measured.
    let measured = |m: &ModeResult| m.probe.costs.getpid_ns > 0.0;
    add("cost", "getpid / open+close / mmap", &|m| {
        let k = &m.probe.costs;
        let v = format!(
            "{:.0} / {:.0} / {:.0} ns",
            k.getpid_ns, k.open_close_ns, k.mmap_munmap_ns
        );
        (
            if measured(m) { v } else { "-".into() },
            None,
            String::new(),
        )
    });
    add("cost", "rootfs write / read", &|m| {
        let k = &m.probe.costs;
        let v = format!(
            "{:.0} / {:.0} MiB/s",
            k.rootfs_write_mib_s, k.rootfs_read_mib_s
        );
        (
            if measured(m) { v } else { "-".into() },
            None,
            String::new(),
        )
    });
    add("cost", "volume write / read", &|m| {
        let k = &m.probe.costs;
        let v = match (k.volume_write_mib_s, k.volume_read_mib_s) {
            (Some(w), Some(r)) => format!("{w:.0} / {r:.0} MiB/s"),
            _ => "-".into(),
        };
        (v, None, String::new())
    });
    rows
}

fn phases(m: &ModeResult) -> String {
    m.timings_ms
        .iter()
        .filter(|(n, _)| n != "total")
        .map(|(n, v)| format!("{n} {v:.0} ms"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The terminal table.
pub fn text(c: &Comparison) -> String {
    let rows = rows(c);
    let label_w = rows
        .iter()
        .map(|r| r.label.chars().count())
        .max()
        .unwrap_or(10)
        .max(10);
    let col_w = 24;
    let mut out = format!(
        "\nBulkhead isolation comparison: {} (host kernel {})\n\n{:<label_w$}",
        c.image, c.host_kernel, ""
    );
    for m in &c.modes {
        out.push_str(&format!("  {:<col_w$}", m.mode.name()));
    }
    out.push('\n');
    let mut section = "";
    for r in &rows {
        if r.section != section {
            section = r.section;
            out.push_str(&format!("-- {section} --\n"));
        }
        out.push_str(&format!("{:<label_w$}", r.label));
        for (text, _, _) in &r.cells {
            let t: String = text.chars().take(col_w).collect();
            out.push_str(&format!("  {t:<col_w$}"));
        }
        out.push('\n');
    }
    out.push_str(
        "\nblocked: the kernel refused; contained: it worked, against the guest kernel only; \
         HOST: it worked against the host kernel or showed the host.\n",
    );
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A horizontal bar chart as inline SVG.
fn bar_chart(title: &str, unit: &str, bars: &[(String, f64)]) -> String {
    let max = bars
        .iter()
        .map(|(_, v)| *v)
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    let (label_w, bar_w, row_h) = (120.0, 360.0, 26.0);
    let height = 30.0 + row_h * bars.len() as f64;
    let mut svg = format!(
        r#"<figure><svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" role="img" aria-label="{}"><text x="0" y="16" class="t">{}</text>"#,
        label_w + bar_w + 110.0,
        esc(title),
        esc(title)
    );
    for (i, (label, v)) in bars.iter().enumerate() {
        let y = 26.0 + row_h * i as f64;
        let w = (v / max * bar_w).max(1.0);
        svg.push_str(&format!(
            r#"<text x="0" y="{}">{}</text><rect x="{label_w}" y="{y}" width="{w:.1}" height="{}" class="b{}"/><text x="{:.1}" y="{}">{v:.1} {}</text>"#,
            y + 15.0,
            esc(label),
            row_h - 8.0,
            i % 4,
            label_w + w + 6.0,
            y + 15.0,
            esc(unit)
        ));
    }
    svg.push_str("</svg></figure>");
    svg
}

/// The report page.
pub fn html(c: &Comparison) -> String {
    let rows = rows(c);
    let mut table = String::from("<table><thead><tr><th></th>");
    for m in &c.modes {
        table.push_str(&format!("<th>{}</th>", esc(m.mode.name())));
    }
    table.push_str("</tr></thead><tbody>");
    let mut section = "";
    for r in &rows {
        if r.section != section {
            section = r.section;
            table.push_str(&format!(
                "<tr class=\"s\"><td colspan=\"{}\">{}</td></tr>",
                c.modes.len() + 1,
                esc(section)
            ));
        }
        table.push_str(&format!("<tr><th>{}</th>", esc(&r.label)));
        for (text, verdict, detail) in &r.cells {
            let class = verdict
                .map(|v| format!(" class=\"{}\"", v.label().to_lowercase().replace('/', "")));
            table.push_str(&format!(
                "<td{}>{}<small>{}</small></td>",
                class.unwrap_or_default(),
                esc(text),
                esc(detail)
            ));
        }
        table.push_str("</tr>");
    }
    table.push_str("</tbody></table>");
    let total = |m: &ModeResult| ms(m, "total").unwrap_or(m.wall_ms);
    let mut charts = bar_chart(
        "start to exit of run --rm (ms)",
        "ms",
        &c.modes
            .iter()
            .map(|m| (m.mode.name().to_owned(), total(m)))
            .collect::<Vec<_>>(),
    );
    if c.modes.iter().any(|m| m.idle_pss_kib.is_some()) {
        charts.push_str(&bar_chart(
            "host memory of an idle container, PSS (MiB)",
            "MiB",
            &c.modes
                .iter()
                .map(|m| {
                    (
                        m.mode.name().to_owned(),
                        m.idle_pss_kib.unwrap_or(0) as f64 / 1024.0,
                    )
                })
                .collect::<Vec<_>>(),
        ));
    }
    if c.modes.iter().any(|m| m.probe.costs.getpid_ns > 0.0) {
        charts.push_str(&bar_chart(
            "open+close of /dev/null (ns)",
            "ns",
            &c.modes
                .iter()
                .map(|m| (m.mode.name().to_owned(), m.probe.costs.open_close_ns))
                .collect::<Vec<_>>(),
        ));
    }
    charts.push_str(&bar_chart(
        "probes that reached the host",
        "",
        &c.modes
            .iter()
            .map(|m| {
                let n = m.verdicts.values().filter(|v| **v == Verdict::Host).count();
                (m.mode.name().to_owned(), n as f64)
            })
            .collect::<Vec<_>>(),
    ));
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Bulkhead isolation comparison: {image}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }}
td small {{ display: block; color: #666; max-width: 28em; font-size: 11px; }}
tr.s td {{ background: #eee; font-weight: bold; }}
td.blocked {{ background: #d9f2d9; }} td.contained {{ background: #fff3c4; }}
td.host {{ background: #f8c9c9; }} td.na {{ background: #f4f4f4; }}
svg text {{ font: 12px system-ui, sans-serif; }} svg text.t {{ font-weight: bold; }}
.b0 {{ fill: #4a78c2; }} .b1 {{ fill: #d9822b; }} .b2 {{ fill: #c23b3b; }} .b3 {{ fill: #5a9e5a; }}
figure {{ display: inline-block; margin: 0 2em 1em 0; }}
</style></head><body>
<h1>Bulkhead isolation comparison</h1>
<p>Image <code>{image}</code>, host kernel <code>{kernel}</code>, {bulkhead}. Generated by <code>bulkhead compare</code> at unix time {time}.</p>
<p><b>blocked</b>: the kernel refused it or showed nothing. <b>contained</b>: it worked, against the guest kernel only. <b>HOST</b>: it worked against the host's kernel, or showed something of the host.</p>
{table}
{charts}
<p>Raw results: <code>report.json</code>.</p>
</body></html>
"#,
        image = esc(&c.image),
        kernel = esc(&c.host_kernel),
        bulkhead = esc(&c.bulkhead),
        time = c.unix_time,
    )
}
