"""audit/formats"""
