"""fashionrec: transfer learning from pretrained image models for fashion tagging and recommendation.

Nothing heavy is imported here: `import fashionrec` must stay cheap for the CLI and the API factory.
"""

__version__ = "0.1.0"
