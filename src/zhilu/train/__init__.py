"""Training: the LightningModule, callbacks, schedules and the recipe that composes them."""
