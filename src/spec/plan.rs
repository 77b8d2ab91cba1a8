//! placeholder
use super::Spec;
pub fn render_plan(_spec: &Spec) -> String {
    String::new()
}
