use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::{on_key, Action};
use crate::{
    report::tui::app::App,
    verdict::{fixtures::*, Engine, EngineConfig},
};

fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}

/// One VM on a routed tap; in a blackout when `stranded`.
fn engine(stranded: bool) -> Engine {
    let mut e = Engine::new(EngineConfig::default());
    e.apply(&attached(0, "tap0", OLD, "routed"));
    if stranded {
        for r in stale_mac_story("tap0", 0).iter().take(7) {
            e.apply(r);
        }
    }
    e
}

#[test]
fn the_nudge_key_asks_first_and_only_y_sends() {
    let e = engine(true);
    let mut app = App::new();
    app.move_selection(&e, 0);
    assert_eq!(on_key(&mut app, &e, key('n')), Action::Continue);
    assert!(app.status.contains("y sends it"), "{}", app.status);
    assert_eq!(on_key(&mut app, &e, key('x')), Action::Continue);
    assert!(app.status.contains("cancelled"), "{}", app.status);
    assert_eq!(app.confirm_nudge, None);
    on_key(&mut app, &e, key('n'));
    assert_eq!(on_key(&mut app, &e, key('y')), Action::Nudge("tap0".into()));
}

#[test]
fn the_nudge_key_does_nothing_outside_a_blackout() {
    let e = engine(false);
    let mut app = App::new();
    app.move_selection(&e, 0);
    on_key(&mut app, &e, key('n'));
    assert!(
        app.status.contains("nudges a VM in BLACKOUT"),
        "{}",
        app.status
    );
    assert_eq!(on_key(&mut app, &e, key('y')), Action::Continue);
}
