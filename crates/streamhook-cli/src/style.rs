//! Colour on a terminal, never in a pipe (or with `NO_COLOR`, or `--color never`).

use std::io::IsTerminal;

/// `--color`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// When stdout is a terminal and `NO_COLOR` is unset.
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Paints text, or not.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    /// Whether to paint.
    pub on: bool,
}

impl Style {
    /// For stdout, per the user's choice.
    pub fn new(choice: ColorChoice) -> Style {
        let on = match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::io::stdout().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            }
        };
        Style { on }
    }

    fn paint(self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    /// Errors.
    pub fn error(self, text: &str) -> String {
        self.paint("1;31", text)
    }

    /// Warnings.
    pub fn warning(self, text: &str) -> String {
        self.paint("1;33", text)
    }

    /// Success.
    pub fn ok(self, text: &str) -> String {
        self.paint("32", text)
    }

    /// Positions and other secondary text.
    pub fn dim(self, text: &str) -> String {
        self.paint("2", text)
    }

    /// Emphasis.
    pub fn bold(self, text: &str) -> String {
        self.paint("1", text)
    }
}
