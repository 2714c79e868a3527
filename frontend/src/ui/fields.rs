//! A labelled text input that shows the validation reason from `shared` right under it.

use leptos::html;
use leptos::prelude::*;
use shared::ValidationError;

/// The message a field shows: the validator's reason once there is something to judge (text typed, or a submit
/// tried), else nothing. The input is trimmed first, as it will be on submit.
pub fn reason(
    value: RwSignal<String>,
    tried: RwSignal<bool>,
    check: fn(&str) -> Result<(), ValidationError>,
) -> Signal<Option<String>> {
    Signal::derive(move || {
        value.with(|v| {
            let v = v.trim();
            if v.is_empty() && !tried.get() {
                return None;
            }
            check(v).err().map(|e| e.to_string())
        })
    })
}

/// A text input with its label, an optional decorative prefix (`#` for rooms), and a live message line the input
/// is described by, so screen readers announce the reason too.
#[component]
pub fn TextField(
    /// The input's id; the message line gets `<id>-msg`.
    id: &'static str,
    /// The visible label.
    label: &'static str,
    /// The text.
    value: RwSignal<String>,
    /// The reason the text is not accepted, if any.
    error: Signal<Option<String>>,
    /// Shown when there is no error.
    #[prop(optional)]
    hint: &'static str,
    /// Decoration before the input.
    #[prop(optional)]
    prefix: Option<&'static str>,
    /// The `autocomplete` attribute.
    #[prop(optional)]
    autocomplete: Option<&'static str>,
    /// Lets the parent focus the input.
    #[prop(optional)]
    input_ref: Option<NodeRef<html::Input>>,
    /// Hide the label visually (it stays for screen readers) where the context already says it.
    #[prop(optional)]
    quiet_label: bool,
) -> impl IntoView {
    let msg_id = format!("{id}-msg");
    let input_ref = input_ref.unwrap_or_default();
    let invalid = move || error.with(Option::is_some);
    view! {
        <div class="field" class:invalid=invalid>
            <label for=id class=("sr-only", quiet_label)>
                {label}
            </label>
            <div class="input-wrap">
                {prefix.map(|p| view! { <span class="prefix" aria-hidden="true">{p}</span> })}
                <input
                    id=id
                    type="text"
                    node_ref=input_ref
                    bind:value=value
                    autocomplete=autocomplete.unwrap_or("off")
                    autocapitalize="off"
                    spellcheck="false"
                    aria-invalid=move || invalid().to_string()
                    aria-describedby=msg_id.clone()
                />
            </div>
            <p id=msg_id class="field-msg" class:error=invalid aria-live="polite">
                {move || error.get().unwrap_or_else(|| hint.to_owned())}
            </p>
        </div>
    }
}
