"""The allocation problem as plain data (numpy only): spaces, costs, budgets, problems, results."""
