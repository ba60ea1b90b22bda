//! Keys.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::app::App;
use crate::verdict::Engine;

/// Rows of entries a scroll is bounded by: the list is never shorter on screen than this
/// when it has something to scroll (the drawing bounds it again by the rows it has).
const SCROLL_ROWS: usize = 5;

#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    Quit,
    /// The operator confirmed a nudge of this tap.
    Nudge(String),
}

/// `n`: asks before a VM in BLACKOUT is nudged (the one thing tapwatch ever writes).
fn ask_nudge(app: &mut App, engine: &Engine) {
    use crate::{model::State, report::text::one_line};
    let (status, confirm) = match app.selected_tap(app.taps(engine)) {
        None => ("select a VM to nudge".to_string(), None),
        Some(t) if t.state != State::Blackout => (
            format!(
                "n nudges a VM in BLACKOUT; {} is {}",
                one_line(t.vm_name()),
                t.state.as_str()
            ),
            None,
        ),
        Some(t) => (
            format!(
                "nudge {} ({})? a frame into its tap (ARP; neighbour discovery for IPv6) \
                 tells the guest its gateway is at {}: y sends it, any other key cancels",
                one_line(t.vm_name()),
                one_line(&t.ifname),
                t.mac.map(|m| m.to_string()).unwrap_or_default()
            ),
            Some(t.ifname.clone()),
        ),
    };
    app.status = status;
    app.confirm_nudge = confirm;
}

pub fn on_key(app: &mut App, engine: &Engine, key: KeyEvent) -> Action {
    if key.kind == KeyEventKind::Release {
        return Action::Continue;
    }
    if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
        return Action::Quit;
    }
    if app.editing_filter {
        match key.code {
            KeyCode::Enter => app.editing_filter = false,
            KeyCode::Esc => {
                app.editing_filter = false;
                app.filter.clear();
            }
            KeyCode::Backspace => {
                app.filter.pop();
            }
            KeyCode::Char(c) => app.filter.push(c),
            _ => {}
        }
        return Action::Continue;
    }
    if app.show_help {
        app.show_help = false;
        return Action::Continue;
    }
    if let Some(tap) = app.confirm_nudge.take() {
        if key.code == KeyCode::Char('y') {
            return Action::Nudge(tap);
        }
        app.status = "nudge cancelled: nothing was sent".into();
        return Action::Continue;
    }
    // A key's message lasts until the next key.
    app.status.clear();
    match key.code {
        KeyCode::Char('q') => return Action::Quit,
        KeyCode::Esc if app.show_detail => app.show_detail = false,
        KeyCode::Esc => return Action::Quit,
        KeyCode::Up | KeyCode::Char('k') => app.move_selection(engine, -1),
        KeyCode::Down | KeyCode::Char('j') => app.move_selection(engine, 1),
        KeyCode::PageUp => app.move_selection(engine, -20),
        KeyCode::PageDown => app.move_selection(engine, 20),
        KeyCode::Enter => app.show_detail = !app.show_detail,
        KeyCode::Char('/') => {
            app.editing_filter = true;
            app.filter.clear();
        }
        KeyCode::Char('s') => app.sort = app.sort.next(),
        KeyCode::Char('p') => app.toggle_pause(engine),
        KeyCode::Char('c') => app.clear_counters(engine),
        KeyCode::Char('n') => ask_nudge(app, engine),
        KeyCode::Char('?') => app.show_help = true,
        KeyCode::Char('[') => app.scroll_timeline(engine, 1, SCROLL_ROWS),
        KeyCode::Char(']') => app.scroll_timeline(engine, -1, SCROLL_ROWS),
        _ => {}
    }
    Action::Continue
}

#[cfg(test)]
mod tests;
