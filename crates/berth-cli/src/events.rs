//! `berth events`: follows `/v2/events` (server-sent events), one line per event.

use crate::Ctx;
use crate::client::query;
use crate::error::CliError;
use crate::table::truncate;
use crate::view::{arr, or_dash, plain, s};
use futures::StreamExt;
use serde_json::Value;

#[derive(Debug, Clone, clap::Args)]
pub struct EventsArgs {
    /// Only these event types (repeat, or separate with commas), e.g. status_update_event.
    #[arg(long = "type", value_name = "TYPE", value_delimiter = ',')]
    pub types: Vec<String>,
}

/// One server-sent event: the `event:` name (may be empty) and the joined `data:` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

/// Incremental `text/event-stream` parser: feed it chunks as they arrive.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a chunk and returns the events it completed (frames end with a blank line).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf
            .extend(chunk.iter().copied().filter(|b| *b != b'\r'));
        let mut events = Vec::new();
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let frame: Vec<u8> = self.buf.drain(..end + 2).collect();
            if let Some(ev) = parse_frame(&String::from_utf8_lossy(&frame[..end])) {
                events.push(ev);
            }
        }
        events
    }
}

fn parse_frame(frame: &str) -> Option<SseEvent> {
    let mut event = String::new();
    let mut data: Vec<&str> = Vec::new();
    for line in frame.lines() {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = value.to_string(),
            "data" => data.push(value),
            _ => {}
        }
    }
    if data.is_empty() {
        return None;
    }
    Some(SseEvent {
        event,
        data: data.join("\n"),
    })
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, args: EventsArgs) -> Result<(), CliError> {
    let pairs: Vec<(&str, String)> = args
        .types
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .map(|t| ("event_type", t.to_string()))
        .collect();
    let path = format!("/v2/events{}", query(&pairs));
    let url = ctx.client.url(&path);
    let resp = ctx.client.stream(&path, "text/event-stream").await?;
    let mut stream = resp.bytes_stream();
    let mut parser = SseParser::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let chunk = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            chunk = stream.next() => chunk,
        };
        let Some(chunk) = chunk else {
            return Ok(());
        };
        let chunk = chunk.map_err(|e| ctx.client.transport_error(&url, e))?;
        for ev in parser.push(&chunk) {
            let line = if ctx.json_mode() {
                ev.data.clone()
            } else {
                format_event(&ev)
            };
            ctx.line(&line)?;
        }
    }
}

/// `<timestamp> <eventType> <summary>`.
pub(crate) fn format_event(ev: &SseEvent) -> String {
    let Ok(data) = serde_json::from_str::<Value>(&ev.data) else {
        return format!(
            "- {} {}",
            or_dash(ev.event.as_str()),
            truncate(&ev.data, 200)
        );
    };
    let kind = match s(&data, "eventType") {
        "" => ev.event.as_str(),
        k => k,
    };
    let summary = summarize(kind, &data);
    format!(
        "{} {} {}",
        or_dash(s(&data, "timestamp")),
        or_dash(kind),
        summary
    )
    .trim_end()
    .to_string()
}

fn join_nonempty(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

fn summarize(kind: &str, d: &Value) -> String {
    match kind {
        "status_update_event" => {
            let mut text = join_nonempty(&[s(d, "appId"), s(d, "taskId"), s(d, "taskStatus")]);
            if !s(d, "host").is_empty() {
                text.push_str(&format!(" on {}", s(d, "host")));
            }
            if !s(d, "message").is_empty() {
                text.push_str(&format!(": {}", truncate(s(d, "message"), 120)));
            }
            text
        }
        "instance_changed_event" => join_nonempty(&[
            s(d, "runSpecId"),
            s(d, "instanceId"),
            s(d, "condition"),
            s(d, "host"),
        ]),
        "instance_health_changed_event" | "health_status_changed_event" => {
            let who = if s(d, "instanceId").is_empty() {
                s(d, "taskId")
            } else {
                s(d, "instanceId")
            };
            let app = if s(d, "appId").is_empty() {
                s(d, "runSpecId")
            } else {
                s(d, "appId")
            };
            let alive = d
                .get("alive")
                .or_else(|| d.get("healthy"))
                .and_then(Value::as_bool);
            let state = match alive {
                Some(true) => "healthy",
                Some(false) => "unhealthy",
                None => "",
            };
            join_nonempty(&[app, who, state])
        }
        "failed_health_check_event" => {
            join_nonempty(&[s(d, "appId"), s(d, "taskId"), s(d, "instanceId")])
        }
        "unhealthy_instance_kill_event" | "unhealthy_task_kill_event" => {
            let mut text = join_nonempty(&[s(d, "appId"), s(d, "taskId"), s(d, "instanceId")]);
            if !s(d, "reason").is_empty() {
                text.push_str(&format!(": {}", s(d, "reason")));
            }
            text
        }
        "app_terminated_event" => s(d, "appId").to_string(),
        "api_post_event" => {
            let app = d.get("appDefinition").map(|a| s(a, "id")).unwrap_or("");
            join_nonempty(&[s(d, "clientIp"), s(d, "uri"), app])
        }
        "group_change_success" | "group_change_failed" => {
            join_nonempty(&[s(d, "groupId"), s(d, "version"), s(d, "reason")])
        }
        "deployment_info" | "deployment_step_success" | "deployment_step_failure" => {
            let plan = d.get("plan").unwrap_or(&Value::Null);
            let actions: Vec<String> = d
                .get("currentStep")
                .map(|st| arr(st, "actions"))
                .unwrap_or(&[])
                .iter()
                .map(|a| format!("{} {}", s(a, "action"), s(a, "app")))
                .collect();
            let mut text = s(plan, "id").to_string();
            if !actions.is_empty() {
                text.push_str(&format!(": {}", actions.join(", ")));
            }
            text
        }
        "deployment_success" | "deployment_failed" => {
            let plan = d.get("plan").unwrap_or(&Value::Null);
            let id = if s(d, "id").is_empty() {
                s(plan, "id")
            } else {
                s(d, "id")
            };
            let apps: Vec<String> = plan
                .get("target")
                .map(|t| arr(t, "apps"))
                .unwrap_or(&[])
                .iter()
                .map(|a| s(a, "id").to_string())
                .collect();
            let mut text = id.to_string();
            if !apps.is_empty() {
                text.push_str(&format!(" ({})", apps.join(", ")));
            }
            text
        }
        "event_stream_attached" | "event_stream_detached" => s(d, "remoteAddress").to_string(),
        _ => {
            let mut rest = d.clone();
            if let Some(m) = rest.as_object_mut() {
                m.remove("eventType");
                m.remove("timestamp");
            }
            truncate(&plain(&rest), 200)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_handles_split_chunks_crlf_and_comments() {
        let mut p = SseParser::new();
        assert!(
            p.push(b": keep-alive\n\nevent: status_update_event\r\nda")
                .is_empty()
        );
        let evs = p.push(b"ta: {\"a\":1}\r\n\r\nevent: x\ndata: l1\ndata: l2\n\nevent: partial");
        assert_eq!(
            evs,
            vec![
                SseEvent {
                    event: "status_update_event".into(),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: "x".into(),
                    data: "l1\nl2".into()
                },
            ]
        );
        assert!(p.push(b"\n").is_empty());
        assert!(p.push(b"\n").is_empty(), "a frame without data is skipped");
    }

    #[test]
    fn parser_keeps_multibyte_characters_split_across_chunks() {
        let mut p = SseParser::new();
        let bytes = "data: é\n\n".as_bytes();
        assert!(p.push(&bytes[..7]).is_empty());
        assert_eq!(p.push(&bytes[7..])[0].data, "é");
    }

    fn line(event: &str, data: &str) -> String {
        format_event(&SseEvent {
            event: event.into(),
            data: data.into(),
        })
    }

    #[test]
    fn summaries() {
        assert_eq!(
            line(
                "status_update_event",
                r#"{"eventType":"status_update_event","timestamp":"T","appId":"/web","taskId":"web.1","taskStatus":"TASK_RUNNING","host":"n1","message":""}"#
            ),
            "T status_update_event /web web.1 TASK_RUNNING on n1"
        );
        assert_eq!(
            line(
                "health_status_changed_event",
                r#"{"eventType":"health_status_changed_event","timestamp":"T","appId":"/web","instanceId":"web.1","alive":false}"#
            ),
            "T health_status_changed_event /web web.1 unhealthy"
        );
        assert_eq!(
            line(
                "deployment_info",
                r#"{"eventType":"deployment_info","timestamp":"T","plan":{"id":"d1"},"currentStep":{"actions":[{"action":"StartApplication","app":"/a"}]}}"#
            ),
            "T deployment_info d1: StartApplication /a"
        );
        assert_eq!(
            line(
                "deployment_success",
                r#"{"eventType":"deployment_success","timestamp":"T","id":"d1","plan":{"target":{"apps":[{"id":"/a"}]}}}"#
            ),
            "T deployment_success d1 (/a)"
        );
        assert_eq!(
            line(
                "event_stream_attached",
                r#"{"eventType":"event_stream_attached","timestamp":"T","remoteAddress":"1.2.3.4"}"#
            ),
            "T event_stream_attached 1.2.3.4"
        );
        assert_eq!(
            line(
                "other",
                r#"{"eventType":"framework_message_event","timestamp":"T","x":1}"#
            ),
            "T framework_message_event {\"x\":1}"
        );
        assert_eq!(line("weird", "not json"), "- weird not json");
    }
}
