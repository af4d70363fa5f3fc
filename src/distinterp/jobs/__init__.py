"""Jobs around sample(): runner settings, the runner, and the distinterp command."""
