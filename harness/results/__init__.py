"""Result directories and what is made from them: summaries, tables, the report, the regression gate."""
