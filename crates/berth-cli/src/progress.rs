//! Live progress while the CLI waits for something (a deployment, a node drain): an
//! indicatif bar when stdout is a terminal, else one plain line per change of state (CI logs,
//! pipes), and nothing in JSON mode.

use crate::Ctx;
use crate::error::CliError;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::time::Duration;

/// One observation to show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Shown {
    /// Units done (healthy new instances, tasks moved off a node).
    pub done: u64,
    /// Units wanted; 0 when unknown (the bar then only spins).
    pub total: u64,
    /// The whole state as one line (plain mode prints it when it changes).
    pub line: String,
    /// The bar's message (the numbers the bar itself does not show).
    pub bar_msg: String,
    /// Why it is not progressing, if known (the bar prints it above itself when it changes).
    pub blocked: Option<String>,
}

const BAR_TEMPLATE: &str =
    "{spinner:.green} [{elapsed}] [{bar:30.cyan/blue}] {pos}/{len} {prefix} {wide_msg}";

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(BAR_TEMPLATE)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

pub(crate) enum Display {
    /// JSON mode: only the final document is printed.
    Silent,
    Plain {
        last: String,
    },
    Bar {
        pb: ProgressBar,
        blocked: Option<String>,
    },
}

impl Display {
    /// Picks the display for `ctx`: silent for JSON, a bar on a terminal, else plain lines.
    pub fn for_ctx(ctx: &Ctx<'_>) -> Self {
        if ctx.json_mode() {
            Display::Silent
        } else if ctx.tty {
            let pb = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stdout());
            pb.set_style(bar_style());
            pb.enable_steady_tick(Duration::from_millis(120));
            Display::Bar { pb, blocked: None }
        } else {
            Display::Plain {
                last: String::new(),
            }
        }
    }

    /// Sets the word after `pos/len` on the bar (e.g. `healthy`).
    pub fn set_unit(&self, unit: &'static str) {
        if let Display::Bar { pb, .. } = self {
            pb.set_prefix(unit);
        }
    }

    pub fn update(&mut self, ctx: &mut Ctx<'_>, shown: &Shown) -> Result<(), CliError> {
        match self {
            Display::Silent => Ok(()),
            Display::Plain { last } => {
                if *last == shown.line {
                    return Ok(());
                }
                last.clone_from(&shown.line);
                ctx.line(&shown.line)
            }
            Display::Bar { pb, blocked } => {
                pb.set_length(shown.total);
                pb.set_position(shown.done.min(shown.total));
                pb.set_message(shown.bar_msg.clone());
                if shown.blocked != *blocked {
                    match &shown.blocked {
                        Some(reason) => pb.println(format!("  blocked: {reason}")),
                        None if blocked.is_some() => pb.println("  no longer blocked"),
                        None => {}
                    }
                    blocked.clone_from(&shown.blocked);
                }
                Ok(())
            }
        }
    }

    /// Prints a note between updates (a plain line, or above the bar).
    pub fn note(&mut self, ctx: &mut Ctx<'_>, text: &str) -> Result<(), CliError> {
        match self {
            Display::Silent => Ok(()),
            Display::Plain { .. } => ctx.line(text),
            Display::Bar { pb, .. } => {
                pb.println(text);
                Ok(())
            }
        }
    }

    /// Removes the bar (before the final summary is printed).
    pub fn finish(self) {
        if let Display::Bar { pb, .. } = self {
            pb.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_template_is_valid_and_bar_updates_do_not_touch_out() {
        assert!(ProgressStyle::with_template(BAR_TEMPLATE).is_ok());
        let mut out = Vec::new();
        let mut ctx = Ctx {
            client: crate::Client::new("http://127.0.0.1:1").unwrap(),
            format: crate::OutputFormat::Table,
            tty: true,
            out: &mut out,
        };
        let mut display = Display::for_ctx(&ctx);
        assert!(matches!(display, Display::Bar { .. }));
        if let Display::Bar { pb, .. } = &display {
            pb.set_draw_target(ProgressDrawTarget::hidden());
        }
        display.set_unit("healthy");
        let shown = Shown {
            done: 1,
            total: 4,
            line: "l".into(),
            bar_msg: "m".into(),
            blocked: Some("b".into()),
        };
        display.update(&mut ctx, &shown).unwrap();
        if let Display::Bar { pb, blocked } = &display {
            assert_eq!((pb.position(), pb.length()), (1, Some(4)));
            assert_eq!(blocked.as_deref(), Some("b"));
        }
        display.finish();
        ctx.format = crate::OutputFormat::Json;
        assert!(matches!(Display::for_ctx(&ctx), Display::Silent));
        assert!(out.is_empty());
    }
}
