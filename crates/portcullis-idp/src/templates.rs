//! Hosted-page templates: embedded defaults, each replaceable by a file of the same name in a
//! directory (`branding.templates_dir`), so a team can brand the pages without a rebuild.

use std::path::Path;

use minijinja::Environment;
use serde_json::Value;

use crate::settings::Branding;

const EMBEDDED: &[(&str, &str)] = &[
    ("base.html", include_str!("../templates/base.html")),
    ("login.html", include_str!("../templates/login.html")),
    ("error.html", include_str!("../templates/error.html")),
    (
        "signed_out.html",
        include_str!("../templates/signed_out.html"),
    ),
];

/// Why the templates (with an override directory) cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("template {name}: {reason}")]
    Syntax { name: &'static str, reason: String },
}

/// The compiled templates.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// Embedded templates, overridden by same-named files in `dir`.
    pub fn load(dir: Option<&Path>) -> Result<Templates, TemplateError> {
        let mut env = Environment::new();
        for (name, source) in EMBEDDED {
            let source = match dir.map(|d| d.join(name)).filter(|p| p.is_file()) {
                Some(path) => std::fs::read_to_string(&path).map_err(|e| TemplateError::Read {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?,
                None => (*source).to_owned(),
            };
            env.add_template_owned((*name).to_owned(), source)
                .map_err(|e| TemplateError::Syntax {
                    name,
                    reason: e.to_string(),
                })?;
        }
        Ok(Templates { env })
    }

    /// Renders a page with the branding and `ctx` (a JSON object).
    pub fn render(
        &self,
        name: &str,
        branding: &Branding,
        ctx: Value,
    ) -> Result<String, minijinja::Error> {
        let mut ctx = match ctx {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        ctx.insert("app_name".into(), Value::from(branding.app_name.clone()));
        ctx.insert(
            "logo_url".into(),
            branding
                .logo_url
                .clone()
                .map(Value::from)
                .unwrap_or(Value::Null),
        );
        ctx.insert(
            "primary_colour".into(),
            Value::from(branding.primary_colour.clone()),
        );
        self.env
            .get_template(name)?
            .render(minijinja::value::Serde(Value::Object(ctx)))
    }
}
