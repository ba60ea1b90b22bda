//! Terminal input and redraw ticks, merged into one stream.

use std::time::Duration;

use crossterm::event::{Event, EventStream, KeyEvent};
use futures::StreamExt;
use tokio::time::{interval, Interval, MissedTickBehavior};

pub enum UiEvent {
    Key(KeyEvent),
    /// Time to redraw (also after a resize).
    Tick,
    /// The terminal input ended or failed.
    InputClosed,
}

pub struct Events {
    input: EventStream,
    tick: Interval,
}

impl Events {
    pub fn new(redraw_every: Duration) -> Self {
        let mut tick = interval(redraw_every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        Self {
            input: EventStream::new(),
            tick,
        }
    }

    pub async fn next(&mut self) -> UiEvent {
        loop {
            tokio::select! {
                ev = self.input.next() => match ev {
                    Some(Ok(Event::Key(k))) => return UiEvent::Key(k),
                    Some(Ok(Event::Resize(..))) => return UiEvent::Tick,
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return UiEvent::InputClosed,
                },
                _ = self.tick.tick() => return UiEvent::Tick,
            }
        }
    }
}
