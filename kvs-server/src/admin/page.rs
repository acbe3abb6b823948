//! The status page: server-rendered HTML with inline CSS and SVG, no script and no
//! external asset, refreshed by the browser every two seconds. Made to be read on a wall
//! screen: a big banner with the state, then the replica, its members, latencies, counts
//! over the last half hour and the latest notable events. Every text from the replica is
//! escaped ([`escape`]).

use std::fmt::Write;

use super::events::Level;
use super::view::{MemberRow, Percentiles, StatusView};

/// Escapes `s` for HTML text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
:root { color-scheme: dark; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px; background: #0b0f17; color: #d8dee9;
  font: 16px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
h2 { font-size: 13px; letter-spacing: .12em; text-transform: uppercase; color: #7d8799;
  margin: 0 0 10px; font-weight: 600; }
.banner { border-radius: 14px; padding: 22px 30px; display: flex; align-items: center;
  justify-content: space-between; gap: 24px; margin-bottom: 22px; }
.banner .state { font-size: 56px; font-weight: 800; letter-spacing: .04em; line-height: 1; }
.banner .reason { font-size: 20px; margin-top: 8px; opacity: .92; }
.banner .who { text-align: right; font-size: 20px; line-height: 1.5; }
.banner .who b { font-size: 30px; }
.ok { background: linear-gradient(135deg, #0f5132, #146c43); color: #eafff3; }
.bad { background: linear-gradient(135deg, #7a1d1d, #a52828); color: #fff0f0; }
.warn { background: linear-gradient(135deg, #7a5a00, #a67c00); color: #fff8e1; }
.grid { display: grid; grid-template-columns: repeat(6, 1fr); gap: 14px; margin-bottom: 22px; }
.card { background: #141a26; border: 1px solid #222b3b; border-radius: 12px; padding: 14px 18px; }
.card .v { font-size: 30px; font-weight: 700; color: #f0f4fa; font-variant-numeric: tabular-nums; }
.card .l { font-size: 13px; color: #7d8799; text-transform: uppercase; letter-spacing: .08em; }
.card .s { font-size: 14px; color: #9aa5b8; }
.row { display: grid; grid-template-columns: 3fr 2fr; gap: 18px; }
.panel { background: #141a26; border: 1px solid #222b3b; border-radius: 12px; padding: 16px 20px;
  margin-bottom: 18px; }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
th { text-align: left; font-size: 12px; color: #7d8799; text-transform: uppercase;
  letter-spacing: .08em; padding: 6px 8px; border-bottom: 1px solid #273044; }
td { padding: 9px 8px; border-bottom: 1px solid #1c2433; font-size: 17px; }
tr:last-child td { border-bottom: 0; }
.pill { display: inline-block; padding: 2px 10px; border-radius: 999px; font-size: 13px;
  font-weight: 700; letter-spacing: .04em; }
.p-up { background: #123d2a; color: #5ee0a0; }
.p-down { background: #4a1616; color: #ff8080; }
.p-self { background: #1d2a44; color: #8fb4ff; }
.p-leader { background: #3b2f07; color: #ffd24d; margin-left: 6px; }
.p-info { background: #1d2a44; color: #8fb4ff; }
.p-warn { background: #4a3a0a; color: #ffcc4d; }
.muted { color: #7d8799; }
.events { list-style: none; margin: 0; padding: 0; max-height: calc(100vh - 330px);
  min-height: 200px; overflow: hidden; }
.events li { padding: 7px 0; border-bottom: 1px solid #1c2433; display: grid;
  grid-template-columns: 86px 78px 1fr; gap: 10px; align-items: baseline; font-size: 15px; }
.events time { color: #7d8799; font-variant-numeric: tabular-nums; }
.spark { display: flex; align-items: center; gap: 14px; margin: 6px 0 12px; }
.spark .n { font-size: 26px; font-weight: 700; min-width: 46px; text-align: right; }
.spark .t { font-size: 13px; color: #7d8799; }
footer { color: #56607a; font-size: 13px; margin-top: 6px; }
"#;

/// Renders the status page of `v`.
pub fn render(v: &StatusView) -> String {
    let mut h = String::with_capacity(16 * 1024);
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str("<meta http-equiv=\"refresh\" content=\"2\">");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    let _ = write!(
        h,
        "<title>{} · kvs replica {}</title><style>{STYLE}</style></head><body>",
        escape(&v.banner),
        v.id
    );
    banner(&mut h, v);
    cards(&mut h, v);
    h.push_str("<div class=\"row\"><div>");
    members(&mut h, v);
    activity(&mut h, v);
    h.push_str("</div><div>");
    events(&mut h, v);
    h.push_str("</div></div>");
    let _ = write!(
        h,
        "<footer>kvs-server · replica {} · status published {} ms ago · refreshes every 2 s · \
         <a href=\"/status\" style=\"color:#8fb4ff\">JSON</a> · \
         <a href=\"/metrics\" style=\"color:#8fb4ff\">metrics</a></footer>",
        v.id, v.published_ms_ago
    );
    h.push_str("</body></html>\n");
    h
}

fn banner(h: &mut String, v: &StatusView) {
    let class = match v.banner.as_str() {
        "HEALTHY" => "ok",
        "STARTING" | "JOINING" | "REPAIRING" | "STOPPING" => "warn",
        _ => "bad",
    };
    let reason = match &v.health.reason {
        Some(r) => escape(r),
        None => match v.leader {
            Some(l) if l == v.id => "this replica leads and hears from a quorum".into(),
            Some(l) => format!("following leader {l}, heard from recently"),
            None => String::new(),
        },
    };
    let leader = match v.leader {
        Some(l) => format!("leader <b id=\"leader\">{l}</b>"),
        None => "leader <b id=\"leader\">none</b>".into(),
    };
    let _ = write!(
        h,
        "<section class=\"banner {class}\"><div><div class=\"state\" id=\"banner\">{}</div>\
         <div class=\"reason\" id=\"reason\">{reason}</div></div>\
         <div class=\"who\">replica <b>{}</b> · <span id=\"role\">{}</span><br>{leader} · ballot {}.{}</div></section>",
        escape(&v.banner),
        v.id,
        v.role,
        v.ballot.round,
        v.ballot.node
    );
}

fn card(h: &mut String, label: &str, value: &str, sub: &str) {
    let _ = write!(
        h,
        "<div class=\"card\"><div class=\"l\">{label}</div><div class=\"v\">{value}</div>\
         <div class=\"s\">{sub}</div></div>"
    );
}

fn ms(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn latency(p: Option<Percentiles>) -> (String, String) {
    match p {
        Some(p) => (format!("{} ms", ms(p.p50)), format!("p99 {} ms", ms(p.p99))),
        None => ("–".into(), "no samples yet".into()),
    }
}

fn cards(h: &mut String, v: &StatusView) {
    h.push_str("<section class=\"grid\">");
    card(
        h,
        "commit slot",
        &v.commit.to_string(),
        &format!("log from {}", v.log_start),
    );
    card(
        h,
        "applied slot",
        &v.applied.to_string(),
        &format!("{} behind commit", v.commit.saturating_sub(v.applied)),
    );
    card(
        h,
        "keys",
        &v.keys.to_string(),
        &format!(
            "{} writes, {} reads pending",
            v.pending_writes, v.pending_reads
        ),
    );
    let (p50, p99) = latency(v.request_ms);
    card(h, "request p50", &p50, &p99);
    let (p50, p99) = latency(v.fsync_ms);
    card(h, "fsync p50", &p50, &p99);
    card(
        h,
        "uptime",
        &duration(v.uptime_s),
        &format!(
            "config {} · quorum {}",
            v.configuration
                .map(|c| c.to_string())
                .unwrap_or_else(|| "–".into()),
            v.quorum
        ),
    );
    h.push_str("</section>");
}

fn duration(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

fn members(h: &mut String, v: &StatusView) {
    h.push_str(
        "<section class=\"panel\"><h2>Members</h2><table id=\"members\"><thead><tr><th>id</th>\
         <th>role</th><th>link</th><th>last heard</th><th>round trip</th><th>commit</th>\
         <th>lag</th><th>address</th></tr></thead><tbody>",
    );
    for m in &v.members {
        member(h, m);
    }
    h.push_str("</tbody></table></section>");
}

fn member(h: &mut String, m: &MemberRow) {
    let link = match m.link {
        "self" => "<span class=\"pill p-self\">this replica</span>",
        "connected" => "<span class=\"pill p-up\">connected</span>",
        _ => "<span class=\"pill p-down\">down</span>",
    };
    let leader = if m.leader {
        "<span class=\"pill p-leader\">LEADER</span>"
    } else {
        ""
    };
    let dash = || "<span class=\"muted\">–</span>".to_string();
    let heard = match (m.this, m.last_heard_ms_ago) {
        (true, _) => dash(),
        (false, Some(t)) if t < 1000 => format!("{t} ms ago"),
        (false, Some(t)) => format!("{:.1} s ago", t as f64 / 1000.0),
        (false, None) => "never".into(),
    };
    let rtt = m
        .rtt_ms
        .map(|r| format!("{} ms", ms(r)))
        .unwrap_or_else(dash);
    let commit = m.commit.map(|c| c.to_string()).unwrap_or_else(dash);
    let lag = m.lag.map(|c| c.to_string()).unwrap_or_else(dash);
    let addr = m.addr.as_deref().map(escape).unwrap_or_else(dash);
    let _ = write!(
        h,
        "<tr class=\"member\" data-id=\"{}\"><td><b>{}</b>{leader}</td><td>{}</td><td>{link}</td>\
         <td>{heard}</td><td>{rtt}</td><td>{commit}</td><td>{lag}</td>\
         <td class=\"muted\">{addr}</td></tr>",
        m.id, m.id, m.role
    );
}

/// Counts per minute as a row of bars.
fn sparkline(h: &mut String, counts: &[u32], color: &str) {
    let width = 480.0;
    let height = 44.0;
    let max = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let n = counts.len().max(1) as f64;
    let bar = width / n;
    let _ = write!(
        h,
        "<svg width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" \
         role=\"img\"><rect width=\"{width}\" height=\"{height}\" fill=\"#0f141f\" rx=\"6\"/>"
    );
    for (i, &c) in counts.iter().enumerate() {
        let bh = if c == 0 {
            2.0
        } else {
            (c as f64 / max) * (height - 8.0) + 2.0
        };
        let fill = if c == 0 { "#273044" } else { color };
        let _ = write!(
            h,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{fill}\" rx=\"1.5\"/>",
            i as f64 * bar + 1.0,
            height - 3.0 - bh,
            (bar - 2.0).max(1.0)
        );
    }
    h.push_str("</svg>");
}

fn activity(h: &mut String, v: &StatusView) {
    h.push_str("<section class=\"panel\"><h2>Last 30 minutes, per minute</h2>");
    let rows = [
        (
            "leader changes",
            &v.leader_changes_per_minute,
            v.leader_changes_total,
            "#ffd24d",
        ),
        (
            "acceptor failures",
            &v.acceptor_failures_per_minute,
            v.acceptor_failures_total,
            "#ff8080",
        ),
    ];
    for (label, counts, total, color) in rows {
        let recent: u32 = counts.iter().sum();
        let _ = write!(h, "<div class=\"spark\"><div class=\"n\">{recent}</div>");
        sparkline(h, counts, color);
        let _ = write!(
            h,
            "<div class=\"t\">{label}<br>{total} since start</div></div>"
        );
    }
    h.push_str("</section>");
}

/// `HH:MM:SS` (UTC) of a time in ms since the Unix epoch.
fn clock(unix_ms: u64) -> String {
    let s = (unix_ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, (s % 3600) / 60, s % 60)
}

fn events(h: &mut String, v: &StatusView) {
    h.push_str(
        "<section class=\"panel\"><h2>Recent events (UTC)</h2><ul class=\"events\" id=\"events\">",
    );
    if v.events.is_empty() {
        h.push_str("<li class=\"muted\">nothing notable yet</li>");
    }
    for e in v.events.iter().take(40) {
        let (class, label) = match e.level {
            Level::Info => ("p-info", "info"),
            Level::Warn => ("p-warn", "warn"),
        };
        let _ = write!(
            h,
            "<li class=\"event\"><time>{}</time><span><span class=\"pill {class}\">{label}</span></span>\
             <span>{}</span></li>",
            clock(e.at_unix_ms),
            escape(&e.text)
        );
    }
    h.push_str("</ul></section>");
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::admin::events::{Kind, Notables};
    use crate::admin::status::{MemberView, Phase, RoleView, Status};
    use crate::metrics::Metrics;

    #[test]
    fn escape_covers_the_five_special_characters() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(escape("plain ünïcode"), "plain ünïcode");
    }

    fn view() -> StatusView {
        let now = Instant::now();
        let mut s = Status::starting(1, now - Duration::from_secs(65));
        s.phase = Phase::Running;
        s.role = RoleView::Leader;
        s.leader = Some(1);
        s.quorum = 2;
        s.members = (1..=3)
            .map(|id| MemberView {
                id,
                voter: true,
                this: id == 1,
                addr: Some(format!("127.0.0.1:700{id}")),
                link_up: (id != 1).then_some(true),
                last_heard: Some(now),
                rtt_ms: (id != 1).then_some(0.4),
                commit: Some(10),
            })
            .collect();
        let events = Notables::new(1);
        events.info(Kind::Link, "<script>alert(1)</script> & more".into());
        events.info(Kind::Leader, "became leader".into());
        StatusView::new(&s, now, &Metrics::new(), &events)
    }

    #[test]
    fn the_page_names_the_leader_lists_members_and_escapes_events() {
        let v = view();
        assert_eq!(v.banner, "HEALTHY");
        let html = render(&v);
        assert!(html.contains("<div class=\"state\" id=\"banner\">HEALTHY</div>"));
        assert!(html.contains("<b id=\"leader\">1</b>"));
        assert_eq!(html.matches("<tr class=\"member\"").count(), 3);
        assert!(!html.contains("<script>"), "event text is escaped");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; more"));
        assert!(html.contains("http-equiv=\"refresh\" content=\"2\""));
    }

    #[test]
    fn clock_and_durations_read_well() {
        assert_eq!(clock(3_723_000), "01:02:03");
        assert_eq!(duration(65), "1m 5s");
        assert_eq!(duration(7300), "2h 1m");
        assert_eq!(ms(0.123), "0.12");
        assert_eq!(ms(123.4), "123");
    }
}
